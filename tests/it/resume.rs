//! Durable jobs with the real binaries: daemons killed with SIGKILL at random points and
//! restarted on the same state, a paused daemon (an outage longer than ICE's timeouts),
//! and a partial file damaged while its daemon was down. The job must always finish by
//! itself, and no file may ever sit under its final name with the wrong content.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::support::random_file;

const P2P: &str = env!("CARGO_BIN_EXE_p2p");
const P2PD: &str = env!("CARGO_BIN_EXE_p2pd");
const SIZE: usize = 256 * 1024 * 1024;
/// Longest the whole campaign may take before it is declared hung.
const CAMPAIGN_LIMIT: Duration = Duration::from_secs(600);

/// A standalone rendezvous, as on a server: it outlives every daemon restart.
struct Rendezvous {
    child: Child,
    url: String,
}

impl Rendezvous {
    fn start() -> Rendezvous {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(P2PD)
            .args(["rendezvous", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rendezvous");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rendezvous did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Rendezvous {
            child,
            url: format!("ws://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One machine: a daemon process that can be killed and started again on the same socket,
/// download directory and state directory.
struct Node {
    dir: tempfile::TempDir,
    rendezvous: String,
    child: Option<Child>,
}

impl Node {
    fn new(rendezvous: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dl")).unwrap();
        let mut node = Node {
            dir,
            rendezvous: rendezvous.to_owned(),
            child: None,
        };
        node.start();
        node
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("p2pd.sock")
    }

    fn downloads(&self) -> PathBuf {
        self.dir.path().join("dl")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("p2pd.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(P2PD)
            .args(["--socket", self.socket().to_str().unwrap()])
            .args(["--download-dir", self.downloads().to_str().unwrap()])
            .args([
                "--state-dir",
                self.dir.path().join("state").to_str().unwrap(),
            ])
            .args(["--rendezvous", &self.rendezvous])
            .args(["--ice-bind", "127.0.0.1:0"])
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "error,p2pd=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn p2pd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status().is_none() {
            assert!(Instant::now() < deadline, "p2pd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `p2p status --json`: one object per job, or None while the daemon is not up.
    fn status(&self) -> Option<Vec<serde_json::Value>> {
        let out = Command::new(P2P)
            .args([
                "--socket",
                self.socket().to_str().unwrap(),
                "status",
                "--json",
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        )
    }

    /// The state and bytes done of this node's only job.
    fn job(&self) -> Option<(String, u64)> {
        let jobs = self.status()?;
        let job = jobs.last()?;
        Some((
            job["state"].as_str().unwrap_or_default().to_owned(),
            job["bytes_done"].as_u64().unwrap_or(0),
        ))
    }

    fn p2p(&self, args: &[&str]) -> Child {
        Command::new(P2P)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn p2p")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `p2p send --json` and returns it with the code from its first event.
fn start_transfer(sender: &Node, receiver: &Node, source: &Path) -> Vec<Child> {
    let mut send = sender.p2p(&["send", "--json", source.to_str().unwrap()]);
    let mut first = String::new();
    BufReader::new(send.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&first).unwrap();
    let code = created["code"].as_str().expect("code").to_owned();
    let receive = receiver.p2p(&["receive", "--yes", "--json", &code]);
    vec![send, receive]
}

/// Every file under its final name in `dir` must be the source, byte for byte.
fn assert_no_wrong_final_file(dir: &Path, source: &[u8]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".p2pd-part") {
            continue;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert!(bytes == source, "{name} exists with the wrong content");
    }
}

/// Size of the partial file being received, if there is one.
fn partial_len(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with(".p2pd-part"))
        .and_then(|e| e.metadata().ok())
        .map(|m| m.len())
}

fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Resume offsets the receiver logged after byte `from` of its log.
fn resume_offsets(log: &str, from: usize) -> Vec<u64> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("p2pd::transfer::receiver") && l.contains("resuming"))
        .filter_map(|l| {
            l.split("offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Moment {
    /// While the two sides are reconnecting (the other side is negotiating).
    Handshake,
    /// Once this fraction of the file has been written at the receiver.
    Progress(f64),
}

/// More moments than the ten interruptions required: a resumed transfer can run past the
/// next moment, and a kill after completion does not count.
const MOMENTS: [Moment; 13] = [
    Moment::Progress(0.03),
    Moment::Handshake,
    Moment::Progress(0.12),
    Moment::Progress(0.22),
    Moment::Handshake,
    Moment::Progress(0.35),
    Moment::Progress(0.5),
    Moment::Handshake,
    Moment::Progress(0.7),
    Moment::Progress(0.93),
    Moment::Progress(0.97),
    Moment::Handshake,
    Moment::Progress(0.99),
];
const INTERRUPTIONS: usize = 10;

enum Victim {
    Sender,
    Receiver,
}

fn campaign(victim: Victim, seed: u64) {
    let started = Instant::now();
    let rendezvous = Rendezvous::start();
    let mut sender = Node::new(&rendezvous.url);
    let mut receiver = Node::new(&rendezvous.url);
    let src = tempfile::tempdir().unwrap();
    let source_path = random_file(src.path(), "big.bin", SIZE, seed);
    let source = std::fs::read(&source_path).unwrap();
    let mut clients = start_transfer(&sender, &receiver, &source_path);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut report = Vec::new();
    let saved = receiver.downloads().join("big.bin");
    // A daemon killed just after its job completed restarts with no job at all.
    let finished = |node: &Node| match node.status() {
        Some(jobs) if jobs.is_empty() => saved.exists(),
        Some(_) => {
            matches!(node.job(), Some((s, _)) if s == "completed" || s == "failed" || s == "cancelled")
        }
        None => false,
    };
    for (round, moment) in MOMENTS.iter().enumerate() {
        if report.len() == INTERRUPTIONS || finished(&receiver) {
            break;
        }
        let (other, name) = match victim {
            Victim::Sender => (&receiver, "sender"),
            Victim::Receiver => (&sender, "receiver"),
        };
        let reached = match *moment {
            Moment::Handshake => wait_for(Duration::from_secs(60), || {
                matches!(other.job(), Some((s, _)) if s == "negotiating") || finished(&receiver)
            }),
            Moment::Progress(fraction) => {
                // A little randomness so no two runs cut at the same byte.
                let target = (SIZE as f64 * fraction) as u64 + rng.gen_range(0..1024 * 1024);
                // The partial's size on disk, polled without spawning anything, so even
                // the last few percent (a fraction of a second) are caught.
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut polls = 0u32;
                loop {
                    if partial_len(&receiver.downloads()).is_some_and(|n| n >= target) {
                        break true;
                    }
                    polls += 1;
                    if polls.is_multiple_of(200) && finished(&receiver) {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        };
        if !reached {
            let log = receiver.log();
            let _ = std::fs::write("/tmp/p2pd-kill-failed-receiver.log", &log);
            let _ = std::fs::write("/tmp/p2pd-kill-failed-sender.log", sender.log());
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "round {round}: {moment:?} never came; receiver {:?} sender {:?}\nreceiver log tail:\n{}\nsender log tail:\n{}",
                receiver.status(),
                sender.status(),
                tail.join("\n"),
                sender
                    .log()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        println!("round {round} {moment:?} at {:.1?}", started.elapsed());
        let progress = partial_len(&receiver.downloads()).unwrap_or(0);
        let log_mark = receiver.log().len();
        let interrupted = !finished(&receiver);
        match victim {
            Victim::Sender => sender.kill(),
            Victim::Receiver => receiver.kill(),
        }
        assert_no_wrong_final_file(&receiver.downloads(), &source);
        if interrupted {
            report.push((round, *moment, progress, log_mark));
        }
        // Damage the partial once while its daemon is down: the damaged block and what
        // follows must be fetched again, and the file must still verify.
        if round == 3
            && let Victim::Receiver = victim
        {
            let partial = std::fs::read_dir(receiver.downloads())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(".p2pd-part"))
                .expect("a partial file while interrupted");
            let mut bytes = std::fs::read(&partial).unwrap();
            assert!(bytes.len() > 2 * 1024 * 1024, "partial of {}", bytes.len());
            bytes[1024 * 1024 + 10] ^= 0xff;
            std::fs::write(&partial, &bytes).unwrap();
        }
        match victim {
            Victim::Sender => sender.start(),
            Victim::Receiver => receiver.start(),
        }
        let _ = name;
    }
    let done = wait_for(CAMPAIGN_LIMIT.saturating_sub(started.elapsed()), || {
        finished(&receiver)
    });
    let log = receiver.log();
    let name = match victim {
        Victim::Sender => "sender",
        Victim::Receiver => "receiver",
    };
    // Kept for a look after a failure; the temporary directories are not.
    let _ = std::fs::write(format!("/tmp/p2pd-kill-{name}-receiver.log"), &log);
    let _ = std::fs::write(format!("/tmp/p2pd-kill-{name}-sender.log"), sender.log());
    assert!(done, "the job never finished; receiver log:\n{log}");
    let completed = |node: &Node| {
        node.status().is_some_and(|jobs| jobs.is_empty())
            || matches!(node.job(), Some((s, _)) if s == "completed")
    };
    assert!(completed(&receiver), "receiver log:\n{log}");
    assert!(
        wait_for(Duration::from_secs(60), || completed(&sender)),
        "sender did not complete: {:?}",
        sender.status()
    );
    assert!(
        std::fs::read(&saved).unwrap() == source,
        "final file differs"
    );
    assert_no_wrong_final_file(&receiver.downloads(), &source);
    assert_eq!(std::fs::read_dir(receiver.downloads()).unwrap().count(), 1);

    // Bytes sent again per interruption: on disk at the kill, less where it resumed.
    let mut resent = Vec::new();
    for (round, moment, progress, mark) in &report {
        let offset = resume_offsets(&log, *mark).first().copied();
        // A handshake kill finds the partial as the last resume left it; the damaged round
        // loses what follows the damage on purpose. Neither says what a kill costs.
        let counted = matches!(moment, Moment::Progress(_))
            && !(*round == 3 && matches!(victim, Victim::Receiver));
        let again = offset
            .filter(|_| counted)
            .map(|o| progress.saturating_sub(o));
        println!(
            "kill {round:>2} {moment:<16?} on disk {:>10} resumed at {:>10} sent again {:>10}",
            progress,
            offset.map(|o| o.to_string()).unwrap_or("-".into()),
            again.map(|a| a.to_string()).unwrap_or("-".into()),
        );
        if let Some(again) = again {
            resent.push(again);
        }
        if *round == 3
            && let (Victim::Receiver, Some(offset)) = (&victim, offset)
        {
            assert!(
                offset <= 1024 * 1024,
                "the damaged block was not fetched again"
            );
        }
    }
    assert!(
        report.len() >= INTERRUPTIONS,
        "only {} kills landed before the transfer finished",
        report.len()
    );
    let mean = resent.iter().sum::<u64>() / resent.len().max(1) as u64;
    println!(
        "{} interruptions, mean sent again over {} mid-transfer kills {:.1} MiB, total time {:.0?}",
        report.len(),
        resent.len(),
        mean as f64 / 1048576.0,
        started.elapsed()
    );
    for mut client in clients.drain(..) {
        let _ = client.kill();
        let _ = client.wait();
    }
}

#[test]
fn killing_the_receiving_daemon_ten_times_never_loses_or_corrupts_the_file() {
    campaign(Victim::Receiver, 11);
}

#[test]
fn killing_the_sending_daemon_ten_times_never_loses_or_corrupts_the_file() {
    campaign(Victim::Sender, 12);
}

#[test]
fn an_outage_longer_than_ice_timeouts_resumes() {
    let rendezvous = Rendezvous::start();
    let sender = Node::new(&rendezvous.url);
    let receiver = Node::new(&rendezvous.url);
    let src = tempfile::tempdir().unwrap();
    let source_path = random_file(src.path(), "big.bin", 64 * 1024 * 1024, 13);
    let mut clients = start_transfer(&sender, &receiver, &source_path);
    assert!(wait_for(Duration::from_secs(60), || {
        matches!(receiver.job(), Some((_, b)) if b > 8 * 1024 * 1024)
    }));
    // Freeze the receiver past ICE's failure timeout (25 s) and our own loss detection.
    receiver.signal(libc::SIGSTOP);
    assert!(
        wait_for(Duration::from_secs(40), || {
            matches!(sender.job(), Some((s, _)) if s == "waiting_to_resume")
        }),
        "the sender never noticed the outage"
    );
    std::thread::sleep(Duration::from_secs(26));
    receiver.signal(libc::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(120), || {
            matches!(receiver.job(), Some((s, _)) if s == "completed")
        }),
        "no resume after the outage: {:?}\n{}",
        receiver.status(),
        receiver.log()
    );
    assert!(
        std::fs::read(receiver.downloads().join("big.bin")).unwrap()
            == std::fs::read(&source_path).unwrap()
    );
    for mut client in clients.drain(..) {
        let _ = client.kill();
        let _ = client.wait();
    }
}
