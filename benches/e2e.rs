//! End-to-end throughput: one file through two `p2pd` processes over loopback, measured
//! from the CLI's send request to the receiver's verified rename, against baselines
//! measured in the same run on the same machine: a raw TCP copy of the same bytes
//! (file → socket → file) and a 1200-byte UDP datagram blast.
//!
//! `cargo bench --bench e2e` (P2PD_BENCH_MIB=1024 by default).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

const P2P: &str = env!("CARGO_BIN_EXE_p2p");
const P2PD: &str = env!("CARGO_BIN_EXE_p2pd");
const COPY_CHUNK: usize = 64 * 1024;

fn mbit(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

fn make_file(path: &Path, mib: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut file = std::fs::File::create(path).expect("create source");
    let mut chunk = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        rng.fill_bytes(&mut chunk);
        file.write_all(&chunk).expect("write source");
    }
    file.sync_all().expect("sync source");
}

/// Reads `source`, sends it over loopback TCP, writes it to `target`.
fn tcp_copy(source: &Path, target: &Path) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let addr = listener.local_addr().expect("addr");
    let target = target.to_owned();
    let start = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut out = std::fs::File::create(&target).expect("create target");
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = stream.read(&mut buf).expect("read socket");
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).expect("write target");
        }
        out.sync_all().expect("sync target");
    });
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut input = std::fs::File::open(source).expect("open source");
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = input.read(&mut buf).expect("read source");
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).expect("write socket");
    }
    drop(stream);
    receiver.join().expect("receiver thread");
    start.elapsed()
}

/// Payload rate of 1200-byte datagrams that actually arrive over loopback.
fn udp_rate(total_bytes: u64) -> f64 {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let addr = rx.local_addr().expect("addr");
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut received = 0u64;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        while let Ok(n) = rx.recv(&mut buf) {
            first.get_or_insert_with(Instant::now);
            received += n as u64;
            last = Instant::now();
        }
        (
            received,
            first.map(|f| last.duration_since(f)).unwrap_or_default(),
        )
    });
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let datagram = [0x5au8; 1200];
    let mut sent = 0u64;
    while sent < total_bytes {
        if tx.send_to(&datagram, addr).is_ok() {
            sent += 1200;
        }
    }
    let (received, elapsed) = counter.join().expect("udp counter");
    mbit(received, elapsed)
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, name: &str, rendezvous: Option<&str>) -> (Daemon, Option<String>) {
        let socket = dir.join(name).join("p2pd.sock");
        let downloads = dir.join(format!("{name}-dl"));
        std::fs::create_dir_all(&downloads).expect("downloads");
        let mut command = Command::new(P2PD);
        command
            .args([
                "--socket",
                socket.to_str().unwrap(),
                "--download-dir",
                downloads.to_str().unwrap(),
            ])
            .args(["--ice-bind", "127.0.0.1:0"])
            .env("RUST_LOG", "error,p2pd=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match rendezvous {
            Some(url) => command.args(["--rendezvous", url]),
            None => command.args(["--rendezvous-listen", "127.0.0.1:0"]),
        };
        let mut child = command.spawn().expect("spawn p2pd");
        // The ready line names the rendezvous URL the other daemon should use.
        let mut url = None;
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        while stderr.read_line(&mut line).expect("daemon log") > 0 {
            if line.contains("p2pd ready") {
                url = line
                    .split("rendezvous=")
                    .nth(1)
                    .map(|u| u.trim().to_owned());
                break;
            }
            line.clear();
        }
        // Keep draining the log so the daemon never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        (Daemon { child, socket }, url)
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `source` from `a` to `b` with the real CLI; returns the end-to-end time.
fn p2pd_transfer(a: &Daemon, b: &Daemon, source: &Path) -> Duration {
    let start = Instant::now();
    let mut sender = Command::new(P2P)
        .args([
            "--socket",
            a.socket.to_str().unwrap(),
            "send",
            "--json",
            source.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("p2p send");
    let mut first = String::new();
    BufReader::new(sender.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("code line");
    let created: serde_json::Value = serde_json::from_str(&first).expect("json");
    let code = created["code"].as_str().expect("code").to_owned();
    let status = Command::new(P2P)
        .args([
            "--socket",
            b.socket.to_str().unwrap(),
            "receive",
            &code,
            "--yes",
            "--json",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("p2p receive");
    let elapsed = start.elapsed();
    assert!(status.success(), "receive failed");
    assert!(sender.wait().expect("sender").success(), "send failed");
    elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    let mib: usize = std::env::var("P2PD_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("P2PD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bytes = (mib * 1024 * 1024) as u64;
    let dir =
        tempfile::tempdir_in(std::env::var("P2PD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("temp dir");
    let source = dir.path().join("payload.bin");
    make_file(&source, mib);

    let (a, url) = Daemon::start(dir.path(), "a", None);
    let (b, _) = Daemon::start(dir.path(), "b", url.as_deref());

    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut p2pd = Vec::new();
    for run in 0..runs {
        let target = dir.path().join("tcp-copy.bin");
        tcp.push(mbit(bytes, tcp_copy(&source, &target)));
        let _ = std::fs::remove_file(&target);
        udp.push(udp_rate(bytes.min(512 * 1024 * 1024)));
        p2pd.push(mbit(bytes, p2pd_transfer(&a, &b, &source)));
        for entry in std::fs::read_dir(dir.path().join("b-dl")).expect("downloads") {
            let _ = std::fs::remove_file(entry.expect("entry").path());
        }
        println!(
            "run {}: p2pd {:.0} Mbit/s, tcp copy {:.0} Mbit/s, udp 1200 B {:.0} Mbit/s",
            run + 1,
            p2pd[run],
            tcp[run],
            udp[run]
        );
    }
    let (p, t, u) = (median(p2pd), median(tcp), median(udp));
    println!("e2e {mib} MiB, median of {runs}:");
    println!("  p2pd end to end     {p:>8.0} Mbit/s");
    println!(
        "  raw TCP file copy   {t:>8.0} Mbit/s   ratio p2pd/tcp = {:.3}",
        p / t
    );
    println!(
        "  UDP 1200 B datagrams{u:>8.0} Mbit/s   ratio p2pd/udp = {:.3}",
        p / u
    );
    println!(
        "  peak RSS: sender daemon {:.1} MiB, receiver daemon {:.1} MiB",
        a.peak_rss_mib(),
        b.peak_rss_mib()
    );
}
