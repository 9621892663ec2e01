//! `--manual`: two real daemons and the real `p2p` commands, with this test carrying the
//! offer and the answer between their terminals as a person would.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::{DaemonProcess, P2P};
use crate::support::{random_file, sha256_file};

/// One running `p2p` with its pipes.
pub(crate) struct Terminal {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<ChildStderr>,
}

impl Terminal {
    pub(crate) fn spawn(program: &str, args: &[&str]) -> Terminal {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Terminal {
            stdin: child.stdin.take(),
            stderr: child.stderr.take(),
            child,
            lines,
        }
    }

    /// The next line on stdout, within a minute.
    pub(crate) fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a line on stdout within a minute")
    }

    pub(crate) fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Waits for the exit; returns the lines stdout still held, and stderr.
    pub(crate) fn finish_with_lines(mut self) -> (Vec<String>, String) {
        self.wait_exit();
        let mut lines = Vec::new();
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            lines.push(line);
        }
        (lines, self.stderr_text())
    }

    /// Waits (at most two minutes) for the exit; returns whether it succeeded and stderr.
    pub(crate) fn finish(mut self) -> (bool, String) {
        let status = self.wait_exit();
        (status.success(), self.stderr_text())
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.stdin.take();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the program did not finish within two minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The six digits a side's stderr showed as its authentication string.
pub(crate) fn sas_of(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Authentication string: "))
        .unwrap_or_else(|| panic!("no authentication string in: {stderr}"));
    line.chars().take(7).collect()
}

#[test]
fn a_file_crosses_with_descriptions_pasted_by_hand_and_both_sides_show_one_string() {
    let (a, b) = (DaemonProcess::start(), DaemonProcess::start());
    let source = random_file(a.dir.path(), "hand.bin", 3 * 1024 * 1024 + 17, 41);
    let socket_a = a.socket.to_str().unwrap().to_owned();
    let socket_b = b.socket.to_str().unwrap().to_owned();
    let mut sender = Terminal::spawn(
        P2P,
        &[
            "--socket",
            &socket_a,
            "send",
            "--manual",
            source.to_str().unwrap(),
        ],
    );
    let offer = sender.line();
    let out = b.downloads.to_str().unwrap().to_owned();
    let mut receiver = Terminal::spawn(
        P2P,
        &[
            "--socket", &socket_b, "receive", "--manual", "--yes", "-o", &out,
        ],
    );
    // A bad paste first: one line saying why, and another chance.
    receiver.type_line("not an offer!");
    receiver.type_line(&offer);
    let answer = receiver.line();
    // The sender is handed its own offer back first: refused, then the answer.
    sender.type_line(&offer);
    sender.type_line(&answer);
    // The sender's person compares the strings before anything is offered.
    sender.type_line("y");
    let (sent, sender_err) = sender.finish();
    let (received, receiver_err) = receiver.finish();
    assert!(sent, "sender failed: {sender_err}");
    assert!(received, "receiver failed: {receiver_err}");
    assert!(
        receiver_err.contains("not base64") && receiver_err.contains("Paste it again"),
        "{receiver_err}"
    );
    assert!(
        sender_err.contains("this is an offer, but the other side's answer is needed here"),
        "{sender_err}"
    );
    assert_eq!(sas_of(&sender_err), sas_of(&receiver_err));
    assert_eq!(
        sha256_file(&b.downloads.join("hand.bin")),
        sha256_file(&source)
    );
}

#[test]
fn a_pasted_offer_that_never_becomes_valid_fails_in_one_line_before_the_daemon_is_asked() {
    let b = DaemonProcess::start();
    let socket_b = b.socket.to_str().unwrap().to_owned();
    let mut receiver = Terminal::spawn(
        P2P,
        &["--socket", &socket_b, "receive", "--manual", "--yes"],
    );
    for junk in ["eyJ0eXBlIjoib2ZmZXIifQ==", "%%%", ""] {
        receiver.type_line(junk);
    }
    let (ok, err) = receiver.finish();
    assert!(!ok);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: nothing was pasted") && last.ends_with("(3 tries)"),
        "{err}"
    );
    assert!(err.contains("not a session description"), "{err}");
    assert_eq!(std::fs::read_dir(&b.downloads).unwrap().count(), 0);
}

#[test]
fn an_ice_server_that_never_answers_ends_a_manual_offer_in_one_line() {
    // Holds a port on which nothing ever answers: a TURN server that is down.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut a = DaemonProcess::start();
    let config = a.dir.path().join(".config/p2pd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[ice_servers]]\nurls = [\"turn:127.0.0.1:{port}\"]\nusername = \"u\"\ncredential = \"p\"\n"
        ),
    )
    .unwrap();
    a.restart();
    let source = random_file(a.dir.path(), "never.bin", 1024, 42);
    let started = std::time::Instant::now();
    let output = a.p2p(&["send", "--manual", source.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ICE gathering did not finish within 15 s")
            && stderr.contains(&format!("turn:127.0.0.1:{port}"))
            && stderr.contains("[[ice_servers]]"),
        "{stderr}"
    );
    assert!(
        took >= p2pd::rtc::peer::manual::GATHER_LIMIT && took < Duration::from_secs(40),
        "{took:?}"
    );
    assert!(output.stdout.is_empty(), "no offer was printed");
}

#[test]
fn a_sender_that_does_not_confirm_the_string_sends_nothing() {
    let (a, b) = (DaemonProcess::start(), DaemonProcess::start());
    let source = random_file(a.dir.path(), "kept.bin", 64 * 1024, 43);
    let socket_a = a.socket.to_str().unwrap().to_owned();
    let socket_b = b.socket.to_str().unwrap().to_owned();
    let mut sender = Terminal::spawn(
        P2P,
        &[
            "--socket",
            &socket_a,
            "send",
            "--manual",
            source.to_str().unwrap(),
        ],
    );
    let offer = sender.line();
    let out = b.downloads.to_str().unwrap().to_owned();
    let mut receiver = Terminal::spawn(
        P2P,
        &[
            "--socket", &socket_b, "receive", "--manual", "--yes", "-o", &out,
        ],
    );
    receiver.type_line(&offer);
    let answer = receiver.line();
    sender.type_line(&answer);
    sender.type_line("n");
    let (sent, sender_err) = sender.finish();
    let (received, receiver_err) = receiver.finish();
    assert!(!sent && !received, "{sender_err}\n{receiver_err}");
    assert!(
        sender_err.contains("nothing was sent: the authentication strings were not confirmed"),
        "{sender_err}"
    );
    assert!(
        receiver_err.contains("the sender did not confirm the authentication string"),
        "{receiver_err}"
    );
    assert_eq!(
        std::fs::read_dir(&b.downloads).unwrap().count(),
        0,
        "not a name arrived"
    );
}

#[test]
fn a_message_over_pasted_descriptions_is_shown_only_once_the_receiver_confirmed_the_string() {
    let (a, b) = (DaemonProcess::start(), DaemonProcess::start());
    let socket_a = a.socket.to_str().unwrap().to_owned();
    let socket_b = b.socket.to_str().unwrap().to_owned();
    let mut sender = Terminal::spawn(
        P2P,
        &[
            "--socket",
            &socket_a,
            "send",
            "--manual",
            "--text",
            "meet at 8",
        ],
    );
    let offer = sender.line();
    // --yes takes files unasked; a message still waits for the comparison.
    let mut receiver = Terminal::spawn(
        P2P,
        &["--socket", &socket_b, "receive", "--manual", "--yes"],
    );
    receiver.type_line(&offer);
    let answer = receiver.line();
    sender.type_line(&answer);
    sender.type_line("y");
    receiver.type_line("y");
    assert_eq!(receiver.line(), "meet at 8");
    let (sent, sender_err) = sender.finish();
    let (received, receiver_err) = receiver.finish();
    assert!(sent, "sender failed: {sender_err}");
    assert!(received, "receiver failed: {receiver_err}");
    let asked = receiver_err
        .find("The sender sent a message. Does the sender's screen show")
        .unwrap_or_else(|| panic!("the receiver was not asked: {receiver_err}"));
    let shown = receiver_err
        .find("Authentication string: ")
        .expect("the string shown");
    assert!(shown < asked, "{receiver_err}");
    assert_eq!(sas_of(&sender_err), sas_of(&receiver_err));
}

/// A man in the middle of a manual transfer: it carries the descriptions, so it is the
/// one the receiver connects to; it runs the string exchange like any sender (its string
/// differs from the real sender's, which only the people comparing notice) and sends a
/// message as the sender's.
mod in_the_middle {
    use std::time::Duration;

    use p2pd::ipc::messages::{ErrorKind, JobId, JobState, Request, ServerFrame};
    use p2pd::rendezvous::Role;
    use p2pd::rtc::RtcSettings;
    use p2pd::rtc::peer::manual::{self, Kind};
    use p2pd::transfer::link::{Incoming, Link};
    use p2pd::transfer::wire::Control;
    use tokio_util::sync::CancellationToken;

    use crate::support::{TEST_LIMIT, TestDaemon};

    fn settings() -> RtcSettings {
        RtcSettings {
            ice_servers: vec![],
            bind: vec!["127.0.0.1:0".into()],
            relay_only: false,
            udp_buffer_bytes: 0,
            sctp_window_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES,
            sctp_window_max_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES,
            sctp_recovery: Default::default(),
            remote_candidates: Default::default(),
        }
    }

    /// Pastes an offer into `daemon` (`p2p receive --manual --yes`), connects, passes the
    /// string exchange and sends `text`; returns the job and the channel.
    async fn send_text(daemon: &TestDaemon, text: &str) -> (JobId, p2pd::rtc::Connection) {
        let (mut pending, offer) = manual::offer(&settings()).await.unwrap();
        let created = daemon
            .client()
            .await
            .call(Request::ReceiveManual {
                offer,
                download_dir: None,
                accept: true,
                follow: false,
                path: Default::default(),
            })
            .await
            .unwrap();
        let ServerFrame::Created(job) = created else {
            panic!("unexpected reply {created:?}")
        };
        let answered = daemon.wait_until(job.id, |i| i.signal.is_some()).await;
        let answer = manual::decode(answered.signal.as_deref().unwrap(), Kind::Answer).unwrap();
        pending.apply_answer(&answer).await.unwrap();
        let connection = pending
            .connected(Duration::from_secs(30), &CancellationToken::new())
            .await
            .unwrap();
        p2pd::transfer::sas::exchange(&connection, &connection.link, Role::Sender)
            .await
            .unwrap();
        let message = Control::Text { text: text.into() }.encode();
        connection.link.send_text(message).await.unwrap();
        (job.id, connection)
    }

    async fn heard(link: &dyn Link) -> Option<Control> {
        match tokio::time::timeout(Duration::from_secs(10), link.recv()).await {
            Ok(Some(Incoming::Text(text))) => Control::decode(&text).ok(),
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_from_whoever_carried_the_paste_waits_for_the_comparison() {
        tokio::time::timeout(TEST_LIMIT, async {
            let daemon = TestDaemon::start().await;
            let (id, connection) = send_text(&daemon, "this is your bank: call 555-0100").await;
            let waiting = daemon
                .wait_until(id, |i| i.state == JobState::Comparing)
                .await;
            assert_eq!(waiting.state, JobState::Comparing, "{waiting:?}");
            assert_eq!(waiting.text, None, "shown before the person compared");
            // The person sees another string than the real sender's and says no.
            daemon.decide(id, false).await;
            let info = daemon.wait(id).await;
            assert_eq!(info.state, JobState::Failed, "{info:?}");
            assert_eq!(info.failure.map(|f| f.kind), Some(ErrorKind::Declined));
            assert_eq!(info.text, None, "never shown");
            match heard(&connection.link).await {
                Some(Control::Reject { reason }) => assert!(
                    reason.contains("did not confirm the authentication string"),
                    "{reason}"
                ),
                other => panic!("expected a refusal, got {other:?}"),
            }
            connection.close().await;

            // Said yes: then it is shown.
            let (id, connection) = send_text(&daemon, "see you at 8").await;
            daemon
                .wait_until(id, |i| i.state == JobState::Comparing)
                .await;
            daemon.decide(id, true).await;
            assert!(matches!(
                heard(&connection.link).await,
                Some(Control::Complete)
            ));
            let _ = connection.link.send_text(Control::Done.encode()).await;
            let info = daemon.wait(id).await;
            assert_eq!(info.state, JobState::Completed, "{info:?}");
            assert_eq!(info.text.as_deref(), Some("see you at 8"));
            connection.close().await;
        })
        .await
        .expect("test finished in time");
    }
}
