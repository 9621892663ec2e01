//! Issue #24: a rendezvous instance killed (`kill -9`, as a crash would) costs no job.
//! Real `p2pd rendezvous` processes share one real `redis-server`; real daemons are each
//! given two instances, A and B. Only A runs at first (B's port is reserved but nothing
//! listens on it), so a daemon can only be at A; then B starts and A is killed while a
//! job waits there, and the job must finish through B. Like the cluster tests, these need
//! redis-server and fail without it, they do not pass by skipping.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2pd::ipc::messages::{JobState, Request, Rule, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::devices::pair;
use crate::support::*;

/// Each test is declared hung after this long (they take a fraction of it).
const LIMIT: Duration = Duration::from_secs(60);

use crate::redis_server::Redis;

/// A port nothing listens on (for now): bound, read, and let go.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// One `p2pd rendezvous --store redis://…` process on `port`. Its log goes to the
/// test's stderr when RUST_LOG is set (e.g. RUST_LOG=p2pd=debug), else nowhere.
struct Instance {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Instance {
    async fn start(port: u16, redis: &Redis) -> Instance {
        let logs = std::env::var_os("RUST_LOG").is_some();
        let child = Command::new(crate::cli::P2PD)
            .args(["rendezvous", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", &redis.url()])
            .stdout(Stdio::null())
            .stderr(if logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("p2pd rendezvous starts");
        let instance = Instance {
            child: Some(child),
            addr: ([127, 0, 0, 1], port).into(),
        };
        instance.healthy().await;
        instance
    }

    /// Waits until `/healthz` answers 200: listening, and its store reached.
    async fn healthy(&self) {
        let start = Instant::now();
        loop {
            if health(self.addr).await == Some(200) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the instance on {} never became healthy",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `kill -9`, as a crash or a lost machine would: no goodbye to anyone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the instance");
            let _ = child.wait();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET /healthz`'s status, or None while nothing answers.
async fn health(addr: SocketAddr) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: rendezvous\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer.split(' ').nth(1)?.parse().ok()
}

/// Redis and instance A running, B's port reserved; daemons given "A,B" can only reach A.
struct Cluster {
    // Fields drop in order: the instances go before their store.
    a: Instance,
    b: Option<Instance>,
    b_port: u16,
    redis: Redis,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = Redis::start();
        let b_port = free_port();
        let a = Instance::start(free_port(), &redis).await;
        Cluster {
            a,
            b: None,
            b_port,
            redis,
        }
    }

    /// Both instances, as a daemon is configured with them.
    fn urls(&self) -> String {
        format!("{},ws://127.0.0.1:{}", self.a.url(), self.b_port)
    }

    async fn daemon(&self, name: &'static str) -> TestDaemon {
        TestDaemon::start_with(Options {
            rendezvous: Some(self.urls()),
            device_name: name,
            ..Options::default()
        })
        .await
    }

    /// B starts on its reserved port; once it is healthy, A is killed with SIGKILL.
    async fn fail_over(&mut self) {
        self.b = Some(Instance::start(self.b_port, &self.redis).await);
        self.a.kill();
        assert_eq!(health(self.a.addr).await, None, "A is gone");
    }
}

/// Prints how long a phase took and starts the next.
fn phase(clock: &mut Instant, what: &str) {
    eprintln!("{what}: {:.2?}", clock.elapsed());
    *clock = Instant::now();
}

async fn set_auto(daemon: &TestDaemon, name: &str) {
    let reply = daemon
        .client()
        .await
        .call(Request::Rule {
            name: name.into(),
            rule: Rule::Auto,
            max_files: None,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(reply, ServerFrame::Devices(ref d) if d.len() == 1 && d[0].rule == Rule::Auto),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_instance_a_send_waits_on_for_an_offline_device_costs_no_job() {
    tokio::time::timeout(LIMIT, async {
        let total = Instant::now();
        let mut clock = Instant::now();
        let mut cluster = Cluster::start().await;
        let sender = cluster.daemon("sender").await;
        let mut receiver = cluster.daemon("receiver").await;
        phase(&mut clock, "redis, instance A and two daemons up");
        pair(&sender, &receiver).await;
        set_auto(&receiver, "sender").await;
        phase(&mut clock, "paired through A");

        receiver.stop().await;
        let src = tempfile::tempdir().unwrap();
        let file = random_file(src.path(), "waited.bin", 2 << 20, 241);
        let job = sender
            .send_to("receiver", std::slice::from_ref(&file))
            .await
            .unwrap();
        let waiting = sender
            .wait_until(job, |i| i.state == JobState::WaitingForPeer)
            .await;
        assert_eq!(waiting.state, JobState::WaitingForPeer, "{waiting:?}");
        // Long enough for the send to be waiting at the device's mailbox on A (the only
        // instance up), and to show it keeps waiting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sender.jobs().await[0].state, JobState::WaitingForPeer);
        phase(&mut clock, "send waiting for the offline device at A");

        cluster.fail_over().await;
        phase(&mut clock, "B started, A killed with SIGKILL");
        // The device comes online; A is gone, so it can only be at B.
        receiver.restart().await;
        phase(&mut clock, "receiver restarted");
        let info = sender.wait(job).await;
        assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
        phase(&mut clock, "send completed through B");
        let saved = receiver.downloads.join("From sender").join("waited.bin");
        assert_eq!(sha256_file(&saved), sha256_file(&file));
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            std::fs::read(&file).unwrap()
        );
        assert_no_partials(&receiver.downloads.join("From sender"));
        eprintln!("whole test: {:.2?}", total.elapsed());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_during_a_resume_costs_no_job() {
    tokio::time::timeout(LIMIT, async {
        let total = Instant::now();
        let mut clock = Instant::now();
        let mut cluster = Cluster::start().await;
        let sender = cluster.daemon("sender").await;
        let mut receiver = cluster.daemon("receiver").await;
        phase(&mut clock, "redis, instance A and two daemons up");

        let src = tempfile::tempdir().unwrap();
        let file = random_file(src.path(), "resumed.bin", 96 << 20, 242);
        let (job, code) = sender.send(std::slice::from_ref(&file)).await.unwrap();
        receiver.receive(&code).await.unwrap();
        let moving = sender.wait_until(job, |i| i.bytes_done > 4 << 20).await;
        assert!(
            moving.bytes_done < moving.bytes_total,
            "the transfer ended before it could be interrupted: {moving:?}"
        );
        phase(&mut clock, "transfer through A under way");

        // Stopped mid-transfer: both sides keep the job and will meet again on its
        // rejoin channel; the sender waits there, at A.
        receiver.stop().await;
        let interrupted = sender
            .wait_until(job, |i| i.state == JobState::WaitingToResume)
            .await;
        assert_eq!(
            interrupted.state,
            JobState::WaitingToResume,
            "{interrupted:?}"
        );
        assert!(interrupted.bytes_done < interrupted.bytes_total);
        tokio::time::sleep(Duration::from_secs(1)).await;
        phase(
            &mut clock,
            "receiver stopped, sender waiting to resume at A",
        );

        cluster.fail_over().await;
        phase(&mut clock, "B started, A killed with SIGKILL");
        receiver.restart().await;
        phase(&mut clock, "receiver restarted");
        let info = sender.wait(job).await;
        assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
        phase(&mut clock, "transfer resumed and completed through B");
        let received = receiver.jobs().await;
        assert!(
            received.iter().all(|j| j.state == JobState::Completed),
            "{received:?}"
        );
        let saved = receiver.downloads.join("resumed.bin");
        assert_eq!(sha256_file(&saved), sha256_file(&file));
        assert_no_partials(&receiver.downloads);
        eprintln!("whole test: {:.2?}", total.elapsed());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_senders_instance_after_its_code_is_shown_costs_no_job() {
    tokio::time::timeout(LIMIT, async {
        let mut clock = Instant::now();
        let mut cluster = Cluster::start().await;
        let sender = cluster.daemon("sender").await;
        let receiver = cluster.daemon("receiver").await;
        phase(&mut clock, "redis, instance A and two daemons up");

        let src = tempfile::tempdir().unwrap();
        let file = random_file(src.path(), "coded.bin", 2 << 20, 243);
        // The code is allocated, and waits, at A: the only instance up.
        let (job, code) = sender.send(std::slice::from_ref(&file)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        phase(&mut clock, "code shown, its sender waiting at A");

        cluster.fail_over().await;
        phase(&mut clock, "B started, A killed with SIGKILL");
        // The code shown before A died is the one the receiver types.
        receiver.receive(&code).await.unwrap();
        let info = sender.wait(job).await;
        assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
        phase(&mut clock, "the code claimed on B, the file sent");
        let saved = receiver.downloads.join("coded.bin");
        assert_eq!(sha256_file(&saved), sha256_file(&file));
        assert_no_partials(&receiver.downloads);
    })
    .await
    .expect("test finished in time");
}
