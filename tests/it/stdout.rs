//! `p2p receive CODE --stdout` (issue #29): one verified file on stdout, nothing left in
//! the download directory or the state directory; several files or a folder declined.

use std::process::{Command, Stdio};

use crate::cli::{DaemonProcess, P2P, spawn_json_send};
use crate::support::random_file;

fn receive_to_stdout(daemon: &DaemonProcess, code: &str) -> std::process::Output {
    Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["receive", code, "--stdout", "--yes"])
        .env_remove("P2PD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn one_file_arrives_on_stdout_and_nothing_stays_on_disk() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "piped.bin", 300_000, 51);
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let out = receive_to_stdout(&daemon, created["code"].as_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, std::fs::read(&path).unwrap());
    assert!(sender.wait().unwrap().success());
    assert_eq!(std::fs::read_dir(&daemon.downloads).unwrap().count(), 0);
    let spools = daemon.state_dir().join("spool");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_dir(&spools).is_ok_and(|mut d| d.next().is_some()) {
        assert!(std::time::Instant::now() < deadline, "the spool stayed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn several_files_are_declined_with_the_reason() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let a = random_file(src.path(), "a.bin", 1000, 52);
    let b = random_file(src.path(), "b.bin", 1000, 53);
    let (mut sender, _stdout, created) = spawn_json_send(
        &daemon.socket,
        &["--json", a.to_str().unwrap(), b.to_str().unwrap()],
    );
    let out = receive_to_stdout(&daemon, created["code"].as_str().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: --stdout takes one file, and this offer holds 2 files"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!sender.wait().unwrap().success(), "the sender hears the no");
}
