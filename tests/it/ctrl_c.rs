//! Ctrl-C (SIGINT, as a terminal sends it to the foreground `p2p`): the command that
//! started a job owns it and cancels it; `p2p watch` only stops watching; `--detach`
//! hands the job over at once.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{DaemonProcess, P2P, json_lines, spawn_json_send};
use crate::support::random_file;

fn interrupt(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// Waits (bounded) for `child` to exit; its exit code and stderr.
fn ended(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
            }
            return (status.code(), stderr);
        }
        assert!(Instant::now() < deadline, "p2p did not exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn job_state(daemon: &DaemonProcess, job: u64) -> String {
    let listed = json_lines(&daemon.p2p(&["status", "--json"]).stdout);
    listed
        .iter()
        .find(|j| j["job"] == job)
        .map(|j| j["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[test]
fn ctrl_c_before_anyone_received_cancels_the_send_and_withdraws_the_code() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "never.bin", 10_000, 31);
    let mut sender = Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["send", "--json", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(sender.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&first).unwrap();
    let (job, code) = (
        created["job"].as_u64().unwrap(),
        created["code"].as_str().unwrap().to_owned(),
    );
    interrupt(&sender);
    let (status, stderr) = ended(sender);
    assert_eq!(status, Some(130), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("Cancelled job {job}")) && stderr.contains("code no longer works"),
        "{stderr}"
    );
    assert_eq!(job_state(&daemon, job), "cancelled");
    // The code was withdrawn: a receiver holding it gets nothing.
    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(!received.status.success());
    let said = String::from_utf8_lossy(&received.stderr);
    assert!(said.contains("code"), "{said}");
    assert!(
        std::fs::read_dir(&daemon.downloads)
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn ctrl_c_mid_transfer_cancels_both_sides_and_leaves_no_partial() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "big.bin", 512 * 1024 * 1024, 32);
    let (sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let code = created["code"].as_str().unwrap().to_owned();
    let mut receiver = Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["receive", &code, "--yes", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut job = None;
    for line in stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event["event"] == "created" {
            job = event["job"].as_u64();
        }
        if event["event"] == "progress" {
            break;
        }
    }
    let job = job.expect("the receiving job");
    interrupt(&receiver);
    let (status, stderr) = ended(receiver);
    assert_eq!(status, Some(130), "{stderr}");
    assert!(stderr.contains(&format!("Cancelled job {job}")), "{stderr}");
    assert_eq!(job_state(&daemon, job), "cancelled");
    // The sender is told and fails, and nothing partial is left behind.
    let sent = sender.wait_with_output().unwrap();
    assert!(!sent.status.success());
    let left: Vec<_> = std::fs::read_dir(&daemon.downloads)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn ctrl_c_in_watch_only_stops_watching() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "later.bin", 10_000, 33);
    // Detached: the code is printed and the job left to the daemon at once.
    let detached = daemon.p2p(&["send", "--detach", path.to_str().unwrap()]);
    assert!(detached.status.success());
    let out = String::from_utf8_lossy(&detached.stdout);
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("Code: "))
        .expect("a code")
        .to_owned();
    let stderr = String::from_utf8_lossy(&detached.stderr);
    let job: u64 = stderr
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(job_state(&daemon, job), "waiting_for_peer");
    let watcher = Command::new(P2P)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["watch", &job.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    interrupt(&watcher);
    let (status, stderr) = ended(watcher);
    assert_eq!(status, Some(130), "{stderr}");
    assert!(stderr.contains("Stopped watching"), "{stderr}");
    assert_eq!(job_state(&daemon, job), "waiting_for_peer");
    // The job goes on and delivers.
    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    assert_eq!(
        std::fs::read(daemon.downloads.join("later.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
}
