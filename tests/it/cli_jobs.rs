//! The real binaries over a job's life: job numbers and history across restarts, a taken
//! rendezvous port, chosen code words, and messages instead of files.

use std::path::Path;
use std::process::Command;

use crate::cli::*;
use crate::support::random_file;

/// Job numbers go on across restarts, finished jobs are still listed after one, and
/// `p2p clear` forgets them (running jobs stay).
#[test]
fn job_numbers_and_history_survive_a_restart_and_clear_forgets_finished_jobs() {
    let mut daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "kept.bin", 20_000, 61);
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let code = created["code"].as_str().unwrap().to_owned();
    assert!(daemon.p2p(&["receive", &code, "--yes"]).status.success());
    assert!(sender.wait().unwrap().success());
    let before: Vec<u64> = json_lines(&daemon.p2p(&["status", "--json"]).stdout)
        .iter()
        .map(|j| j["job"].as_u64().unwrap())
        .collect();
    assert_eq!(before, [1, 2]);

    daemon.restart();
    let listed = json_lines(&daemon.p2p(&["status", "--json"]).stdout);
    let after: Vec<(u64, String)> = listed
        .iter()
        .map(|j| {
            (
                j["job"].as_u64().unwrap(),
                j["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        after,
        [(1, "completed".to_owned()), (2, "completed".to_owned())]
    );
    let (mut waiting, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    assert_eq!(created["job"], 3, "numbers go on: {created}");

    let cleared = daemon.p2p(&["clear"]);
    assert!(cleared.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cleared.stderr).trim(),
        "Forgot 2 finished jobs"
    );
    let left: Vec<u64> = json_lines(&daemon.p2p(&["status", "--json"]).stdout)
        .iter()
        .map(|j| j["job"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [3]);
    // Cleared stays cleared across a restart too.
    assert!(daemon.p2p(&["cancel", "3"]).status.success());
    let _ = waiting.wait();
    daemon.restart();
    assert!(daemon.p2p(&["clear"]).status.success());
    let listed = json_lines(&daemon.p2p(&["status", "--json"]).stdout);
    assert!(listed.is_empty(), "{listed:?}");
}

/// A rendezvous port someone else holds: one line naming the address, the way out and
/// the system's reason once.
#[test]
fn a_taken_rendezvous_port_is_one_line_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(P2PD)
        .args(["--socket", dir.path().join("s.sock").to_str().unwrap()])
        .args(["--download-dir", dir.path().to_str().unwrap()])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["--rendezvous-listen", &addr])
        .env("HOME", dir.path())
        .env_remove("P2PD_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(&addr) && line.contains("--rendezvous-listen"),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "said twice: {line}");
}

#[test]
fn a_sender_may_choose_the_code_words() {
    // A word not on the list is refused before the daemon is asked.
    let nowhere = Path::new("/nonexistent/p2pd.sock");
    assert_one_line_error(
        &p2p_with_socket(nowhere, &["send", "--code", "orbit-zzzz", "/etc/hostname"]),
        "not one of p2pd's code words",
    );
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "chosen.bin", 5_000, 71);
    let (mut sender, _stdout, created) = spawn_json_send(
        &daemon.socket,
        &["--json", "--code", "orbit-lantern", path.to_str().unwrap()],
    );
    let code = created["code"].as_str().unwrap().to_owned();
    assert!(code.ends_with("-orbit-lantern"), "{code}");
    assert!(daemon.p2p(&["receive", &code, "--yes"]).status.success());
    assert!(sender.wait().unwrap().success());
}

/// `p2p send --text`: the receiver prints the message, line by line, with anything that
/// would drive its terminal escaped; nothing is written to disk.
#[test]
fn a_text_message_is_printed_not_saved() {
    let daemon = DaemonProcess::start();
    let message = "see you at 8\nbring the \u{1b}]0;PWNED\u{7}keys";
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", "--text", message]);
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let shown = String::from_utf8_lossy(&received.stdout);
    assert!(shown.contains("see you at 8\n"), "{shown}");
    assert!(shown.contains("bring the "), "{shown}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(
        std::fs::read_dir(&daemon.downloads)
            .unwrap()
            .next()
            .is_none()
    );
    assert!(sender.wait().unwrap().success());

    // JSON carries it whole; empty or files-and-text are one-line errors.
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", "--text", "hello"]);
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes", "--json"]);
    let values = json_lines(&received.stdout);
    let text = values
        .iter()
        .find(|v| v["event"] == "text")
        .expect("a text event");
    assert_eq!(text["text"], "hello");
    assert_eq!(
        events(&values).last().map(String::as_str),
        Some("completed")
    );
    assert!(sender.wait().unwrap().success());
    assert_one_line_error(&daemon.p2p(&["send", "--text", " "]), "the text is empty");
    let long = "x".repeat(p2pd::transfer::wire::MAX_TEXT_BYTES + 1);
    assert_one_line_error(&daemon.p2p(&["send", "--text", &long]), "as a file");
}
