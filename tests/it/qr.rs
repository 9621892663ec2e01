//! `p2p send --qr` (issue #29): the page link with the code in it, as a QR code.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::cli::{DaemonProcess, P2P};
use crate::support::random_file;

#[test]
fn send_qr_draws_the_page_link_with_the_code() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "for-a-phone.bin", 1000, 9);
    let mut sender = Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["send", "--qr", "--json", "--detach"])
        .arg(&path)
        .env_remove("P2PD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(sender.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&first).expect("JSON stays on stdout");
    let code = created["code"].as_str().unwrap();
    let mut shown = String::new();
    sender
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    assert!(sender.wait().unwrap().success(), "{shown}");
    let link = shown
        .lines()
        .find(|l| l.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no link:\n{shown}"));
    assert!(link.ends_with(&format!("/#receive={code}")), "{link}");
    // Dense1x2: two rows of modules per line, in full and half blocks.
    let drawn = shown
        .lines()
        .filter(|l| l.contains('█') || l.contains('▀'))
        .count();
    assert!(drawn >= 10, "no QR code drawn:\n{shown}");
    assert!(shown.contains("this machine only"), "{shown}");
    let cancelled = Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cancel", &created["job"].to_string()])
        .output()
        .unwrap();
    assert!(cancelled.status.success());
}
