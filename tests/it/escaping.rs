//! Names from files, peers and the network on the terminal, and local paths on the wire:
//! what each side may print, and what the other side may learn.

use std::path::Path;
use std::process::Output;

use p2pd::ipc::messages::JobState;

use crate::cli::{DaemonProcess, assert_one_line_error, json_lines, spawn_json_send};
use crate::support::*;

/// A name that would retitle the terminal, clear it, and break or reverse the line.
const EVIL: &str = "\u{1b}]0;PWNED\u{7}\u{1b}[2Jevil";

/// Nothing in `text` that moves the cursor, drives the terminal or reorders the line.
fn assert_harmless(text: &str, what: &str) {
    for c in text.chars() {
        let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        assert!(
            (!c.is_control() || c == '\n') && !bidi,
            "{what}: raw {c:?} in {text:?}"
        );
    }
}

fn assert_output_harmless(output: &Output, what: &str) {
    assert_harmless(&String::from_utf8_lossy(&output.stdout), what);
    assert_harmless(&String::from_utf8_lossy(&output.stderr), what);
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn hostile_names_reach_no_terminal_raw() {
    let daemon = DaemonProcess::start();
    let root = daemon.dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    // Each folder holds one bad name among good ones; the whole send is refused.
    for (n, bad) in [EVIL, "line\nbreak", "invoice\u{202E}fdp.exe", "a\u{9b}2J"]
        .iter()
        .enumerate()
    {
        let dir = root.join(format!("dir{n}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("fine.txt"), b"x").unwrap();
        std::fs::write(dir.join(bad), b"x").unwrap();
        for json in [false, true] {
            let mut args = vec!["send", arg(&dir)];
            if json {
                args.push("--json");
            }
            let output = daemon.p2p(&args);
            assert_one_line_error(&output, "is not allowed");
            assert_output_harmless(&output, bad);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("\\u{"), "escaped, not dropped: {stderr}");
        }
    }
    // The top-level folder itself so named, and a missing path so named.
    let top = root.join(EVIL);
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("fine.txt"), b"x").unwrap();
    let output = daemon.p2p(&["send", arg(&top)]);
    assert_one_line_error(&output, "is not allowed");
    assert_output_harmless(&output, "top-level folder");
    let missing = root.join(format!("{EVIL}.missing"));
    let output = daemon.p2p(&["send", arg(&missing)]);
    assert_one_line_error(&output, "no such file");
    assert_output_harmless(&output, "missing file");
    // A download directory so named that does not exist.
    let output = daemon.p2p(&["receive", "7-orbit-lantern", "--yes", "-o", arg(&missing)]);
    assert_one_line_error(&output, "does not exist");
    assert_output_harmless(&output, "missing download directory");
    // The root has no name to send it under: say so, not "not valid UTF-8".
    let output = daemon.p2p(&["send", "/"]);
    assert_one_line_error(&output, "has no name of its own");

    // A good transfer into a download directory with a hostile name: the saved paths are
    // escaped in the human output, and in JSON, where they still parse to the real path.
    let file = random_file(&root, "data.bin", 1000, 3);
    let out = daemon.dir.path().join(format!("dl{EVIL}\u{202E}"));
    std::fs::create_dir(&out).unwrap();
    for json in [true, false] {
        let (mut sender, _, created) = spawn_json_send(&daemon.socket, &["--json", arg(&file)]);
        let code = created["code"].as_str().unwrap().to_owned();
        let mut args = vec!["receive", &code, "--yes", "-o", arg(&out)];
        if json {
            args.push("--json");
        }
        let received = daemon.p2p(&args);
        assert!(received.status.success(), "{received:?}");
        assert_output_harmless(&received, "saved path");
        if json {
            let verified = json_lines(&received.stdout)
                .into_iter()
                .find(|v| v["event"] == "file_verified")
                .expect("file_verified event");
            assert_eq!(verified["path"].as_str(), Some(arg(&out.join("data.bin"))));
        } else {
            let text = String::from_utf8_lossy(&received.stdout);
            assert!(
                text.contains("Saved \"") && text.contains("\\u{202e}"),
                "{text}"
            );
        }
        assert!(sender.wait().unwrap().success());
        std::fs::remove_file(out.join("data.bin")).unwrap();
    }
    let status = daemon.p2p(&["status"]);
    assert!(status.status.success());
    assert_output_harmless(&status, "status table");
}

/// The receiver fails on its own download directory: its message names the directory
/// (escaped), and the sender learns why but not where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_paths_stay_on_their_side() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "data.bin", 1000, 5);
        let place = tempfile::tempdir().unwrap();
        let dir = place.path().join(format!("private{EVIL}"));
        std::fs::create_dir(&dir).unwrap();
        let (send_id, code) = a.send(&[path]).await.unwrap();
        let receive_id = b.receive_into(&code, Some(&dir)).await.unwrap();
        // Gone before the offer arrives (that takes a key exchange and a WebRTC set-up).
        std::fs::remove_dir(&dir).unwrap();
        let received = b.wait(receive_id).await;
        let sent = a.wait(send_id).await;
        assert_eq!(received.state, JobState::Failed);
        assert_eq!(sent.state, JobState::Failed);
        let local = received.failure.unwrap().message;
        let remote = sent.failure.unwrap().message;
        assert_harmless(&local, "receiver's message");
        assert_harmless(&remote, "sender's message");
        assert!(local.contains("private\\u{1b}"), "{local}");
        assert_eq!(local.matches("os error 2").count(), 1, "{local}");
        assert!(remote.contains("download directory"), "{remote}");
        assert!(remote.contains("os error 2"), "{remote}");
        let tmp = place.path().to_str().unwrap();
        assert!(
            !remote.contains("private") && !remote.contains(tmp),
            "the sender learned a local path: {remote}"
        );
    })
    .await
    .expect("test finished in time");
}

/// The daemon's own one-line errors: a config path so named, and its cause said once.
#[test]
fn daemon_errors_are_escaped_and_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join(format!("{EVIL}.toml"));
    std::fs::create_dir(&config).unwrap();
    let output = std::process::Command::new(crate::cli::P2PD)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("p2pd.sock"))
        .output()
        .expect("run p2pd");
    assert_one_line_error(&output, "cannot read config file");
    assert_output_harmless(&output, "p2pd config error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}
