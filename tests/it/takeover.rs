//! Issue #23, item 1: another local user must not stand in for the daemon. With
//! `XDG_RUNTIME_DIR` unset the socket lives in `$TMPDIR/p2pd-UID/`; whoever creates that
//! directory first could swap the socket, so the daemon refuses a directory not its own,
//! and `p2p` sends nothing to a socket held by another user or answering like a client.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{P2P, P2PD, assert_one_line_error};

/// Debian's, which another user can run (a toolchain under /root is out of their reach).
const PYTHON: &str = "/usr/bin/python3";
const NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::netns_harness::skip(why);
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        crate::netns_harness::skip("needs setpriv (util-linux)");
    }
}

/// A directory like `/tmp`: owned by root, world-writable, sticky.
fn shared_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    tmp
}

fn as_nobody(args: &[&str]) -> Command {
    let mut command = Command::new(NOBODY[0]);
    command.args(&NOBODY[1..]).args(args);
    command
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn daemon_refuses_a_fallback_directory_another_user_made_first() {
    require_root("needs root to pre-create the directory as another user");
    let tmp = shared_tmp();
    let home = tempfile::tempdir().unwrap();
    // SAFETY: getuid has no preconditions.
    let fallback = tmp
        .path()
        .join(format!("p2pd-{}", unsafe { libc::getuid() }));
    let made = as_nobody(&["mkdir", "-m", "1777"])
        .arg(&fallback)
        .status()
        .unwrap();
    assert!(made.success());

    let output = Command::new(P2PD)
        .args(["--download-dir", home.path().to_str().unwrap()])
        .args([
            "--rendezvous-listen",
            "127.0.0.1:0",
            "--ice-bind",
            "127.0.0.1:0",
        ])
        .env("HOME", home.path())
        .env("TMPDIR", tmp.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("P2PD_SOCKET")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&output, "belongs to another user (uid 65534)");
    // Nothing of ours went into their directory.
    assert_eq!(std::fs::read_dir(&fallback).unwrap().count(), 0);
}

/// A listener that records every byte it is sent and echoes it back, run by `prefix`
/// (another user, or none for our own uid). Returns the child and where the count goes.
fn echoing_impostor(socket: &Path, record: &Path, prefix: &[&str]) -> std::process::Child {
    const SCRIPT: &str = r#"
import socket, sys, os
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777); s.listen(4)
got = b""
c, _ = s.accept(); c.settimeout(5)
try:
    while True:
        b = c.recv(65536)
        if not b: break
        got += b; c.sendall(b)
except Exception: pass
open(sys.argv[2], "wb").write(got)
"#;
    let mut command = match prefix.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(PYTHON);
            c
        }
        None => Command::new(PYTHON),
    };
    let child = command
        .arg("-c")
        .arg(SCRIPT)
        .arg(socket)
        .arg(record)
        .spawn()
        .expect("run /usr/bin/python3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the impostor did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn receive_with_code(socket: &Path) -> std::process::Output {
    Command::new(P2P)
        .arg("--socket")
        .arg(socket)
        .args(["receive", "--yes", "7-orbit-lantern"])
        .env_remove("P2PD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn recorded(mut impostor: std::process::Child, record: &Path) -> Vec<u8> {
    assert!(impostor.wait().unwrap().success());
    let mut got = Vec::new();
    std::fs::File::open(record)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    got
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn another_users_socket_gets_nothing_from_p2p() {
    require_root("needs root to listen as another user");
    let tmp = shared_tmp();
    let socket = tmp.path().join("p2pd.sock");
    let record = tmp.path().join("got");
    let impostor = echoing_impostor(&socket, &record, &NOBODY);
    let output = receive_with_code(&socket);
    assert_one_line_error(&output, "held by another user's process (uid 65534)");
    assert_eq!(
        recorded(impostor, &record),
        b"",
        "p2p sent the impostor bytes"
    );
}

#[test]
fn a_socket_that_echoes_the_hello_never_gets_the_code() {
    if Command::new(PYTHON).arg("--version").output().is_err() {
        crate::netns_harness::skip("needs python3 for the echoing socket");
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p2pd.sock");
    let record = dir.path().join("got");
    let impostor = echoing_impostor(&socket, &record, &[]);
    let output = receive_with_code(&socket);
    assert_one_line_error(&output, "did not answer as a p2pd");
    let got = recorded(impostor, &record);
    assert!(!got.is_empty(), "the hello was sent");
    assert!(
        !got.windows(7).any(|w| w == b"lantern"),
        "the code reached the impostor"
    );
}
