//! Issue #24: one `p2pd rendezvous` instance, run as the service runs it (its own
//! process, its default capacity), holds 10,000 idle daemons — each waiting on a channel,
//! as a daemon waits at its mailbox — and says what that costs in memory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::flood::RawWs;

const IDLE: usize = 10_000;
/// Source addresses the connections come from (127.0.1.x), each under the service's
/// per-address caps: 100 connections and 100 requests in the minute.
const ADDRESSES: usize = 100;

struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Room for one end of every connection, in this process and in the instance (which
/// inherits it): root may raise the ceiling, anyone the soft limit up to it.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = IDLE as u64 + 2_000;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= wanted {
        return;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_err() {
        crate::netns_harness::skip("needs an open-file limit of 12,000 (root raises it)");
    }
}

async fn idle_daemon(source: [u8; 4], server: SocketAddr) -> RawWs {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{server}"), stream)
        .await
        .expect("websocket handshake");
    let channel = hex::encode(rand::random::<[u8; 32]>());
    let rejoin = format!(r#"{{"type":"rejoin","channel":"{channel}","sender":false}}"#);
    ws.send(Message::text(rejoin)).await.unwrap();
    ws
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "privileged: needs root (an open-file limit of 12,000); run with `cargo test -- --include-ignored` as root, as CI does"]
fn one_instance_holds_ten_thousand_idle_daemons() {
    raise_open_files();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .args(["rendezvous", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("p2pd rendezvous starts");
    let instance = Instance(child);
    let pid = instance.0.id();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(server).is_err() {
        assert!(Instant::now() < deadline, "the instance never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = resident_kib(pid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let mut held: Vec<RawWs> = Vec::with_capacity(IDLE);
        for batch in 0..IDLE / 500 {
            let opening = (0..500).map(|i| {
                let n = batch * 500 + i;
                idle_daemon([127, 0, 1, (n % ADDRESSES) as u8 + 1], server)
            });
            held.extend(futures_util::future::join_all(opening).await);
        }
        let opened = started.elapsed();
        // Past the deadline a connection that asked for nothing would be cut (10 s): these
        // asked, and wait.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let mut cut = 0;
        for ws in &mut held {
            if let Some(news) = ws.next().now_or_never() {
                cut += 1;
                if cut == 1 {
                    eprintln!("first connection cut: {news:?}");
                }
            }
        }
        let after = resident_kib(pid);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / IDLE as f64;
        eprintln!(
            "{IDLE} idle daemons opened in {opened:?}; instance RSS {before} KiB before, {after} KiB holding them ({per:.0} bytes each)"
        );
        assert_eq!(cut, 0, "{cut} of {IDLE} idle daemons were cut");
        for ws in &mut held {
            let _ = ws.close(None).now_or_never();
        }
    });
}
