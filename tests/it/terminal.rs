//! The CLI on a terminal: `p2p` run in a pseudo-terminal (util-linux `script`), typing
//! answers into it, reading what a person would see.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::cli::{DaemonProcess, P2P, spawn_json_send};
use crate::support::random_file;

/// Runs `p2p ARGS` in a pseudo-terminal with `typed` as the keyboard; returns its exit
/// status and everything the terminal showed.
fn on_terminal(socket: &std::path::Path, args: &[&str], typed: &str) -> (bool, String) {
    let mut child = spawn_on_terminal(socket, args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    (out.status.success(), shown)
}

#[test]
fn the_offer_says_where_the_files_go_and_no_saves_nothing() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "big.bin", 100_000, 41);
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let code = created["code"].as_str().unwrap().to_owned();
    let (ok, shown) = on_terminal(&daemon.socket, &["receive", &code], "n\n");
    assert!(!ok, "declining is not success:\n{shown}");
    assert!(shown.contains("big.bin"), "{shown}");
    assert!(
        shown.contains(&format!("Saving to \"{}\"", daemon.downloads.display())),
        "the prompt names the destination:\n{shown}"
    );
    assert!(shown.contains("Accept? [y/N]"), "{shown}");
    assert!(shown.contains("Declined: nothing was saved"), "{shown}");
    assert!(!shown.contains("error:"), "declining is no error:\n{shown}");
    assert!(shown.contains("The sender offers 1 file, "), "{shown}");
    assert!(
        std::fs::read_dir(&daemon.downloads)
            .unwrap()
            .next()
            .is_none()
    );
    assert!(!sender.wait().unwrap().success());
}

#[test]
fn output_dir_overrides_the_destination_and_yes_saves_there() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "here.bin", 50_000, 42);
    let elsewhere = tempfile::tempdir().unwrap();
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let code = created["code"].as_str().unwrap().to_owned();
    let out = elsewhere.path().to_str().unwrap();
    let (ok, shown) = on_terminal(&daemon.socket, &["receive", &code, "-o", out], "y\n");
    assert!(ok, "{shown}");
    assert!(shown.contains(&format!("Saving to \"{out}\"")), "{shown}");
    assert_eq!(
        std::fs::read(elsewhere.path().join("here.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
    assert!(sender.wait().unwrap().success());
}

/// `script` running `p2p ARGS` on a pseudo-terminal, left running.
fn spawn_on_terminal(socket: &std::path::Path, args: &[&str]) -> std::process::Child {
    let command = std::iter::once(P2P.to_owned())
        .chain(["--socket".to_owned(), socket.display().to_string()])
        .chain(args.iter().map(|a| (*a).to_owned()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("HOME", "/nonexistent-home")
        .env_remove("P2PD_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script, to give p2p a terminal")
}

/// The receiver takes three seconds to answer: the sender says it is waiting, and its
/// final line's time and rate count from when data moved, not from the offer.
#[test]
fn a_slow_accept_is_waited_for_not_counted() {
    use std::io::{BufRead, Read};
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "slow.bin", 32 * 1024 * 1024, 43);
    let mut sender = spawn_on_terminal(&daemon.socket, &["send", path.to_str().unwrap()]);
    let mut out = std::io::BufReader::new(sender.stdout.take().unwrap());
    let mut code = None;
    let mut line = String::new();
    while code.is_none() && out.read_line(&mut line).unwrap() > 0 {
        code = line
            .trim()
            .strip_prefix("Code: ")
            .map(|c| c.trim().to_owned());
        line.clear();
    }
    let code = code.expect("the sender's code");
    let mut receiver = spawn_on_terminal(&daemon.socket, &["receive", &code]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    receiver.stdin.take().unwrap().write_all(b"y\n").unwrap();
    assert!(receiver.wait().unwrap().success());
    let mut shown = String::new();
    out.read_to_string(&mut shown).unwrap();
    assert!(sender.wait().unwrap().success(), "{shown}");
    let shown = shown.replace('\r', "\n");
    assert!(
        shown.contains("Waiting for the receiver to accept"),
        "{shown}"
    );
    let summary = shown
        .lines()
        .find(|l| l.contains("Sent 1 file, 32.00 MiB in "))
        .unwrap_or_else(|| panic!("no final line:\n{shown}"));
    assert!(summary.ends_with("verified by the receiver"), "{summary}");
    // "in 412 ms" or "in 1.3 s": well under the three-second wait.
    let took = summary.split(" in ").nth(1).unwrap();
    let seconds: f64 = match took.split_once(' ') {
        Some((n, rest)) if rest.starts_with("ms") => n.parse::<f64>().unwrap() / 1000.0,
        Some((n, rest)) if rest.starts_with("s ") => n.parse().unwrap(),
        _ => panic!("unexpected time in {summary}"),
    };
    assert!(seconds < 2.5, "the wait was counted: {summary}");
    assert_eq!(
        std::fs::read(daemon.downloads.join("slow.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
}

/// Ctrl-C typed on the terminal (the line discipline turns it into SIGINT for `p2p`):
/// the send it started is cancelled and says so.
#[test]
fn ctrl_c_typed_on_the_terminal_cancels_the_send() {
    use std::io::{BufRead, Read};
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "typed.bin", 10_000, 44);
    let mut sender = spawn_on_terminal(&daemon.socket, &["send", path.to_str().unwrap()]);
    let mut out = std::io::BufReader::new(sender.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("Code: ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no code");
    }
    sender.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let mut shown = String::new();
    out.read_to_string(&mut shown).unwrap();
    let status = sender.wait().unwrap();
    assert!(!status.success(), "{shown}");
    assert!(shown.contains("Cancelled job 1"), "{shown}");
    let status = crate::cli::json_lines(&daemon.p2p(&["status", "--json"]).stdout);
    assert_eq!(status[0]["state"], "cancelled", "{status:?}");
}

/// Issue #29: a long name wrapped the bar over three lines at 70 columns, and the `Saved`
/// line landed above the final bar.
#[test]
fn a_long_name_keeps_its_bar_on_one_line_and_saved_comes_after_it() {
    let name = format!("{}.bin", "a-very-long-file-name-".repeat(5));
    for columns in [70usize, 200] {
        let daemon = DaemonProcess::start();
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), &name, 4 * 1024 * 1024, 44);
        let (mut sender, _stdout, created) =
            spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
        let code = created["code"].as_str().unwrap().to_owned();
        let command = format!(
            "stty cols {columns}; '{P2P}' --socket '{}' receive '{code}' --yes",
            daemon.socket.display()
        );
        let out = Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .env("HOME", "/nonexistent-home")
            .env_remove("P2PD_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
        assert!(out.status.success(), "{shown}");
        assert!(sender.wait().unwrap().success());
        let width = columns.saturating_sub(50).clamp(12, 60);
        let bars: Vec<&str> = shown.lines().filter(|l| l.contains("] ")).collect();
        assert!(!bars.is_empty(), "{shown}");
        for bar in &bars {
            assert!(
                !bar.contains(&name[..width + 1]),
                "the whole name drawn:\n{shown}"
            );
            assert!(bar.contains('…'), "the name is cut in the middle:\n{shown}");
        }
        // Each line the person is left with starts a line of its own, bars gone first.
        let saved = shown
            .lines()
            .find(|l| l.contains("Saved \""))
            .expect("a Saved line");
        assert!(
            saved
                .trim_start_matches(|c: char| c.is_control() || "[2K".contains(c))
                .starts_with("Saved \""),
            "{shown}"
        );
        let summary = shown.rfind("Received 1 file").expect("the summary");
        assert!(shown.rfind("Saved \"").unwrap() < summary, "{shown}");
    }
}

/// Issue #29: `p2p receive` with no code offers what waits in the inbox first.
#[test]
fn receive_without_a_code_offers_the_inbox_first() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = runtime.block_on(async {
        let a = crate::support::TestDaemon::start().await;
        let b = a.peer().await;
        crate::devices::pair(&a, &b).await;
        (a, b)
    });
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "from-the-inbox.bin", 20_000, 45);
    let job = runtime
        .block_on(a.send_to("peer", std::slice::from_ref(&path)))
        .unwrap();
    let offer = runtime.block_on(async {
        loop {
            let waiting = b
                .jobs()
                .await
                .into_iter()
                .find(|j| j.state == p2pd::ipc::messages::JobState::AwaitingApproval);
            if let Some(job) = waiting {
                break job;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let (ok, shown) = on_terminal(&b.socket, &["receive"], &format!("{}\ny\n", offer.id));
    assert!(ok, "{shown}");
    assert!(shown.contains("Offers waiting for an answer:"), "{shown}");
    assert!(shown.contains("from test, 1 file(s)"), "{shown}");
    assert!(shown.contains("Accept? [y/N]"), "{shown}");
    let sent = runtime.block_on(a.wait(job));
    assert_eq!(sent.state, p2pd::ipc::messages::JobState::Completed);
    assert_eq!(
        std::fs::read(b.downloads.join("From test").join("from-the-inbox.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
}

/// Issue #29: `p2p inbox --watch` asks about each offer as it arrives.
#[test]
fn inbox_watch_asks_about_an_offer_as_it_arrives() {
    use std::io::Read;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = runtime.block_on(async {
        let a = crate::support::TestDaemon::start().await;
        let b = a.peer().await;
        crate::devices::pair(&a, &b).await;
        (a, b)
    });
    let mut watching = spawn_on_terminal(&b.socket, &["inbox", "--watch"]);
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "watched.bin", 20_000, 46);
    let job = runtime
        .block_on(a.send_to("peer", std::slice::from_ref(&path)))
        .unwrap();
    // Answer once the question shows, then end the input, which ends the watch.
    let mut out = watching.stdout.take().unwrap();
    let mut shown = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&shown).contains("Accept? [y/N]") {
        assert_eq!(
            out.read(&mut byte).unwrap(),
            1,
            "the watch ended without asking"
        );
        shown.push(byte[0]);
    }
    let mut stdin = watching.stdin.take().unwrap();
    stdin.write_all(b"y\n").unwrap();
    let sent = runtime.block_on(a.wait(job));
    assert_eq!(sent.state, p2pd::ipc::messages::JobState::Completed);
    drop(stdin);
    out.read_to_end(&mut shown).unwrap();
    assert!(watching.wait().unwrap().success());
    let shown = String::from_utf8_lossy(&shown).replace('\r', "");
    assert!(shown.contains("from test: watched.bin"), "{shown}");
    assert!(shown.contains("Accepted"), "{shown}");
    assert_eq!(
        std::fs::read(b.downloads.join("From test").join("watched.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
}
