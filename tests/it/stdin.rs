//! `p2p send -` (issue #29): stdin is kept on disk in the daemon's state directory, not
//! in the runtime directory's small tmpfs, and the daemon removes it when the send is
//! over or when `p2p` dies before sending it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{DaemonProcess, P2P, assert_one_line_error};
use crate::support::sha256_file;

fn send_stdin(daemon: &DaemonProcess, stdin: Stdio, name: &str) -> Child {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(P2P);
    command
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["send", "-", "--name", name, "--json"])
        .env_remove("P2PD_SOCKET")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // As typed at a terminal: a suite started in the background by a non-interactive
    // shell runs with SIGINT ignored, which p2p (rightly) inherits, and the Ctrl-C case
    // would then wait forever.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// `p2p ARGS` on this daemon, with nothing on stdin.
fn p2p(daemon: &DaemonProcess, args: &[&str]) -> std::process::Output {
    Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The code from a `--json` send's first line.
fn code_of(sender: &mut Child) -> String {
    let mut stdout = BufReader::new(sender.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let created: serde_json::Value = serde_json::from_str(&first).unwrap();
    let code = created["code"].as_str().unwrap().to_owned();
    // Keep reading, so the sender never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    code
}

/// The spools in the daemon's state directory.
fn spools(daemon: &DaemonProcess) -> Vec<String> {
    match std::fs::read_dir(daemon.state_dir().join("spool")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stdin_is_sent_as_one_named_file_and_its_spool_goes_with_the_send() {
    let daemon = DaemonProcess::start();
    let data: Vec<u8> = (0..300_000u32).flat_map(|n| n.to_le_bytes()).collect();
    let mut sender = send_stdin(&daemon, Stdio::piped(), "numbers.bin");
    sender.stdin.take().unwrap().write_all(&data).unwrap();
    let code = code_of(&mut sender);
    assert_eq!(spools(&daemon).len(), 1, "kept while the send waits");
    let received = p2p(&daemon, &["receive", &code, "--yes"]);
    assert!(received.status.success());
    assert!(sender.wait().unwrap().success());
    assert_eq!(
        std::fs::read(daemon.downloads.join("numbers.bin")).unwrap(),
        data
    );
    until("the spool is removed", Duration::from_secs(5), || {
        spools(&daemon).is_empty()
    });
    assert_one_line_error(&p2p(&daemon, &["send", "-", "/etc/hostname"]), "on its own");
    assert_one_line_error(
        &p2p(&daemon, &["send", "--name", "x", "/etc/hostname"]),
        "use it with p2p send -",
    );
}

#[test]
fn a_p2p_killed_while_reading_stdin_leaves_no_spool() {
    // Issue #23: the spool used to stay behind on SIGKILL, SIGHUP or SIGINT.
    let daemon = DaemonProcess::start();
    for signal in [libc::SIGKILL, libc::SIGHUP, libc::SIGINT] {
        let mut sender = send_stdin(&daemon, Stdio::piped(), "partial.bin");
        let mut stdin = sender.stdin.take().unwrap();
        stdin.write_all(&[7u8; 64 * 1024]).unwrap();
        until("the spool is made", Duration::from_secs(10), || {
            spools(&daemon).len() == 1
        });
        // SAFETY: signalling our own child.
        unsafe { libc::kill(sender.id() as i32, signal) };
        let _ = sender.wait();
        until("the spool is removed", Duration::from_secs(5), || {
            spools(&daemon).is_empty()
        });
        drop(stdin);
    }
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn a_200_mib_pipe_through_a_50_mib_runtime_directory_arrives_verified() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::netns_harness::skip("needs root to mount a tmpfs");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=50M,mode=0700", "tmpfs"])
        .arg(&run)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a 50 MiB tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&run);
    let source = tempfile::tempdir().unwrap();
    let original = crate::support::random_file(source.path(), "big.bin", 200 << 20, 29);
    let daemon = DaemonProcess::start_in(dir, &[], "error");
    // A real pipe, as from tar: cat writes into it.
    let mut cat = Command::new("cat")
        .arg(&original)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = Stdio::from(cat.stdout.take().unwrap());
    let mut sender = send_stdin(&daemon, pipe, "big.bin");
    let code = code_of(&mut sender);
    let received = p2p(&daemon, &["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    assert!(sender.wait().unwrap().success());
    assert!(cat.wait().unwrap().success());
    assert_eq!(
        sha256_file(&daemon.downloads.join("big.bin")),
        sha256_file(&original)
    );
}
