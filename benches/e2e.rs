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

/// The `p2p` used with a daemon is the one built beside it (see `Daemon::start_binary`).
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
    /// The `p2p` that speaks this daemon's IPC: the one built beside it.
    cli: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, name: &str, rendezvous: Option<&str>) -> (Daemon, Option<String>) {
        Daemon::start_with(dir, name, rendezvous, &[])
    }

    fn start_with(
        dir: &Path,
        name: &str,
        rendezvous: Option<&str>,
        extra: &[&str],
    ) -> (Daemon, Option<String>) {
        Daemon::start_binary(P2PD, dir, name, rendezvous, extra)
    }

    /// [`Daemon::start_with`] with another build of `p2pd` (a baseline).
    fn start_binary(
        binary: &str,
        dir: &Path,
        name: &str,
        rendezvous: Option<&str>,
        extra: &[&str],
    ) -> (Daemon, Option<String>) {
        let socket = dir.join(name).join("p2pd.sock");
        let downloads = dir.join(format!("{name}-dl"));
        std::fs::create_dir_all(&downloads).expect("downloads");
        let mut command = Command::new(binary);
        command
            .args([
                "--socket",
                socket.to_str().unwrap(),
                "--download-dir",
                downloads.to_str().unwrap(),
                // Job records beside everything else, never in the user's data dir.
                "--state-dir",
                dir.join(name).join("state").to_str().unwrap(),
            ])
            .args(["--ice-bind", "127.0.0.1:0"])
            .args(extra)
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
        // Another commit's daemon may speak another IPC version: drive it with its own CLI.
        let cli = Path::new(binary).with_file_name("p2p");
        assert!(
            cli.exists(),
            "no p2p beside {binary}: build that commit's whole package (cargo build --release)"
        );
        (Daemon { child, socket, cli }, url)
    }

    /// CPU seconds (user and system) the daemon has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the parenthesised name; utime and stime are the 14th and 15th.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
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

/// Sends `sources` from `a` to `b` with the real CLI; returns the end-to-end time, from
/// the send request to the receiving CLI's exit after the last verified rename.
fn p2pd_transfer(a: &Daemon, b: &Daemon, sources: &[PathBuf]) -> Duration {
    p2pd_transfer_into(a, b, sources, None)
}

/// As [`p2pd_transfer`], saving into `output` (`p2p receive -o`) when given.
fn p2pd_transfer_into(
    a: &Daemon,
    b: &Daemon,
    sources: &[PathBuf],
    output: Option<&Path>,
) -> Duration {
    let start = Instant::now();
    let mut sender = Command::new(&a.cli)
        .args(["--socket", a.socket.to_str().unwrap(), "send", "--json"])
        .args(sources)
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
    let mut receive = Command::new(&b.cli);
    receive.args([
        "--socket",
        b.socket.to_str().unwrap(),
        "receive",
        &code,
        "--yes",
        "--json",
    ]);
    if let Some(output) = output {
        receive.arg("-o").arg(output);
    }
    let status = receive.stdout(Stdio::null()).status().expect("p2p receive");
    let elapsed = start.elapsed();
    assert!(status.success(), "receive failed");
    assert!(sender.wait().expect("sender").success(), "send failed");
    elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clear(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("downloads") {
        let _ = std::fs::remove_file(entry.expect("entry").path());
    }
}

struct Pair {
    a: Daemon,
    b: Daemon,
    received: PathBuf,
}

fn pair(dir: &Path, tag: &str) -> Pair {
    let (a, url) = Daemon::start(dir, &format!("{tag}-a"), None);
    let (b, _) = Daemon::start(dir, &format!("{tag}-b"), url.as_deref());
    Pair {
        a,
        b,
        received: dir.join(format!("{tag}-b-dl")),
    }
}

/// One large file: p2pd against TCP and UDP on loopback, same run.
fn throughput(dir: &Path) {
    let mib = env_or("P2PD_BENCH_MIB", 1024);
    let runs = env_or("P2PD_BENCH_RUNS", 3);
    let bytes = (mib * 1024 * 1024) as u64;
    let source = dir.join("payload.bin");
    make_file(&source, mib);
    let pair = pair(dir, "throughput");
    let (mut tcp, mut udp, mut p2pd) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let target = dir.join("tcp-copy.bin");
        tcp.push(mbit(bytes, tcp_copy(&source, &target)));
        let _ = std::fs::remove_file(&target);
        udp.push(udp_rate(bytes.min(512 * 1024 * 1024)));
        p2pd.push(mbit(
            bytes,
            p2pd_transfer(&pair.a, &pair.b, std::slice::from_ref(&source)),
        ));
        clear(&pair.received);
        println!(
            "run {}: p2pd {:.0} Mbit/s, tcp copy {:.0} Mbit/s, udp 1200 B {:.0} Mbit/s",
            run + 1,
            p2pd[run],
            tcp[run],
            udp[run]
        );
    }
    // The shared machine drifts within a run: pair each p2pd run with the baselines measured
    // right beside it, and report the median of those ratios next to the ratio of medians.
    let per_run = |base: &[f64]| median(p2pd.iter().zip(base).map(|(p, b)| p / b).collect());
    let (udp_ratio, tcp_ratio) = (per_run(&udp), per_run(&tcp));
    let (p, t, u) = (median(p2pd.clone()), median(tcp), median(udp));
    println!("throughput: {mib} MiB, median of {runs}");
    println!("  p2pd end to end      {p:>8.0} Mbit/s");
    println!(
        "  raw TCP file copy    {t:>8.0} Mbit/s   p2pd/tcp: ratio of medians {:.3}, median per-run ratio {tcp_ratio:.3}",
        p / t
    );
    println!(
        "  UDP 1200 B datagrams {u:>8.0} Mbit/s   p2pd/udp: ratio of medians {:.3}, median per-run ratio {udp_ratio:.3}",
        p / u
    );
    println!(
        "  peak RSS: sender daemon {:.1} MiB, receiver daemon {:.1} MiB",
        pair.a.peak_rss_mib(),
        pair.b.peak_rss_mib()
    );
    let _ = std::fs::remove_file(&source);
}

/// The SCTP p2pd carries against rtc-sctp 0.21.1 as released, alternating on loopback:
/// throughput and CPU seconds per GiB of both daemons, same run. P2PD_BENCH_TRANSPORT
/// names the `--sctp-recovery` steps to compare (default `upstream,bbr`); ratios are to
/// the first. A step spelled `NAME=PATH` runs the `p2pd` at PATH instead, with its own
/// defaults (another commit's build, as a baseline), driven by the `p2p` beside it.
fn transport(dir: &Path) {
    let mib = env_or("P2PD_BENCH_MIB", 1024);
    let runs = env_or("P2PD_BENCH_RUNS", 3);
    let steps: Vec<String> = std::env::var("P2PD_BENCH_TRANSPORT")
        .unwrap_or_else(|_| "upstream,bbr".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let bytes = (mib * 1024 * 1024) as u64;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let source = dir.join("transport.bin");
    make_file(&source, mib);
    let pairs: Vec<(String, Pair)> = steps
        .iter()
        .map(|step| {
            let (binary, flags) = match step.split_once('=') {
                Some((_, path)) => (path, vec![]),
                None => (P2PD, vec!["--sctp-recovery", step.as_str()]),
            };
            let name = step.split('=').next().unwrap_or(step);
            let tag = format!("transport-{name}");
            let (a, url) = Daemon::start_binary(binary, dir, &format!("{tag}-a"), None, &flags);
            let (b, _) =
                Daemon::start_binary(binary, dir, &format!("{tag}-b"), url.as_deref(), &flags);
            let received = dir.join(format!("{tag}-b-dl"));
            (name.to_owned(), Pair { a, b, received })
        })
        .collect();
    let mut rates = vec![Vec::new(); pairs.len()];
    let mut cpu = vec![Vec::new(); pairs.len()];
    for run in 0..runs {
        for (i, (step, pair)) in pairs.iter().enumerate() {
            let before = pair.a.cpu_seconds() + pair.b.cpu_seconds();
            let elapsed = p2pd_transfer(&pair.a, &pair.b, std::slice::from_ref(&source));
            let used = pair.a.cpu_seconds() + pair.b.cpu_seconds() - before;
            clear(&pair.received);
            rates[i].push(mbit(bytes, elapsed));
            cpu[i].push(used / gib);
            println!(
                "run {}: {step} {:.0} Mbit/s, {:.2} CPU s/GiB (both daemons)",
                run + 1,
                rates[i][run],
                cpu[i][run]
            );
        }
    }
    println!("transport: {mib} MiB over loopback, median of {runs}");
    let (base_rate, base_cpu) = (median(rates[0].clone()), median(cpu[0].clone()));
    for (i, (step, _)) in pairs.iter().enumerate() {
        let (rate, used) = (median(rates[i].clone()), median(cpu[i].clone()));
        println!(
            "  {step:<9} {rate:>8.0} Mbit/s {used:>6.2} CPU s/GiB   rate {:.3} ×, CPU {:.3} ×",
            rate / base_rate,
            used / base_cpu
        );
    }
    let _ = std::fs::remove_file(&source);
}

/// The 4 MiB UDP socket buffers against the kernel's default (`--udp-buffer-bytes 0`),
/// alternating, with the UDP baseline beside each pair of runs.
fn buffers(dir: &Path) {
    let mib = env_or("P2PD_BENCH_MIB", 1024).min(256);
    let runs = env_or("P2PD_BENCH_RUNS", 3);
    let bytes = (mib * 1024 * 1024) as u64;
    let source = dir.join("buffers.bin");
    make_file(&source, mib);
    let tuned = pair(dir, "buffers-tuned");
    let (a, url) = Daemon::start_with(dir, "buffers-default-a", None, &["--udp-buffer-bytes", "0"]);
    let (b, _) = Daemon::start_with(
        dir,
        "buffers-default-b",
        url.as_deref(),
        &["--udp-buffer-bytes", "0"],
    );
    let default_received = dir.join("buffers-default-b-dl");
    let (mut big, mut small, mut udp) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        udp.push(udp_rate(bytes.min(512 * 1024 * 1024)));
        big.push(mbit(
            bytes,
            p2pd_transfer(&tuned.a, &tuned.b, std::slice::from_ref(&source)),
        ));
        clear(&tuned.received);
        small.push(mbit(
            bytes,
            p2pd_transfer(&a, &b, std::slice::from_ref(&source)),
        ));
        clear(&default_received);
        println!(
            "run {}: 4 MiB buffers {:.0} Mbit/s, kernel default {:.0} Mbit/s, udp 1200 B {:.0} Mbit/s",
            run + 1,
            big[run],
            small[run],
            udp[run]
        );
    }
    let (b4, b0, u) = (median(big), median(small), median(udp));
    println!("buffers: {mib} MiB, median of {runs}");
    println!(
        "  4 MiB UDP buffers    {b4:>8.0} Mbit/s   {:.3} × udp",
        b4 / u
    );
    println!(
        "  kernel default       {b0:>8.0} Mbit/s   {:.3} × udp",
        b0 / u
    );
    let _ = std::fs::remove_file(&source);
}

/// Peak memory of fresh daemons for a small and a large file: it must not grow with size.
fn memory(dir: &Path) {
    let big_mib = env_or("P2PD_BENCH_BIG_MIB", 4096);
    for mib in [256, big_mib] {
        let source = dir.join(format!("memory-{mib}.bin"));
        make_file(&source, mib);
        let pair = pair(dir, &format!("memory{mib}"));
        let elapsed = p2pd_transfer(&pair.a, &pair.b, std::slice::from_ref(&source));
        println!(
            "memory: {mib} MiB in {:.1} s ({:.0} Mbit/s): peak RSS sender {:.1} MiB, receiver {:.1} MiB",
            elapsed.as_secs_f64(),
            mbit((mib * 1024 * 1024) as u64, elapsed),
            pair.a.peak_rss_mib(),
            pair.b.peak_rss_mib()
        );
        drop(pair);
        let _ = std::fs::remove_file(&source);
    }
}

/// Sends `files` over loopback TCP as name, length, bytes; the far side creates each file.
fn tcp_many(files: &[PathBuf], target: &Path) -> Duration {
    std::fs::create_dir_all(target).expect("target dir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let addr = listener.local_addr().expect("addr");
    let target = target.to_owned();
    let count = files.len();
    let start = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut stream = std::io::BufReader::new(stream);
        for _ in 0..count {
            let mut header = [0u8; 10];
            stream.read_exact(&mut header).expect("header");
            let name_len = u16::from_be_bytes([header[0], header[1]]) as usize;
            let len = u64::from_be_bytes(header[2..].try_into().unwrap()) as usize;
            let mut name = vec![0u8; name_len];
            stream.read_exact(&mut name).expect("name");
            let mut data = vec![0u8; len];
            stream.read_exact(&mut data).expect("data");
            std::fs::write(target.join(String::from_utf8(name).unwrap()), &data).expect("write");
        }
    });
    let mut stream = std::io::BufWriter::new(TcpStream::connect(addr).expect("connect"));
    for file in files {
        let data = std::fs::read(file).expect("read");
        let name = file.file_name().unwrap().to_str().unwrap().as_bytes();
        stream
            .write_all(&(name.len() as u16).to_be_bytes())
            .unwrap();
        stream
            .write_all(&(data.len() as u64).to_be_bytes())
            .unwrap();
        stream.write_all(name).unwrap();
        stream.write_all(&data).unwrap();
    }
    stream.flush().unwrap();
    drop(stream);
    receiver.join().expect("receiver");
    start.elapsed()
}

/// Many small files in one folder transfer: files per second, against a TCP copy of them.
fn small_files(dir: &Path) {
    let count = env_or("P2PD_BENCH_FILES", 10_000);
    let source_dir = dir.join("small");
    std::fs::create_dir_all(&source_dir).expect("small dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let files: Vec<PathBuf> = (0..count)
        .map(|i| {
            let path = source_dir.join(format!("f{i:05}.bin"));
            let mut data = vec![0u8; 4096];
            rng.fill_bytes(&mut data);
            std::fs::write(&path, &data).expect("write small file");
            path
        })
        .collect();
    let runs = env_or("P2PD_BENCH_RUNS", 3);
    let pair = pair(dir, "small");
    let (mut p2pd, mut tcp) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let target = dir.join("small-tcp");
        tcp.push(count as f64 / tcp_many(&files, &target).as_secs_f64());
        let _ = std::fs::remove_dir_all(&target);
        // A fresh directory each run, as for the TCP baseline.
        let output = dir.join(format!("small-out-{run}"));
        std::fs::create_dir_all(&output).expect("output dir");
        let elapsed = p2pd_transfer_into(
            &pair.a,
            &pair.b,
            std::slice::from_ref(&source_dir),
            Some(&output),
        );
        let received = std::fs::read_dir(output.join("small"))
            .expect("received folder")
            .count();
        assert_eq!(received, count, "every file arrived");
        let _ = std::fs::remove_dir_all(&output);
        p2pd.push(count as f64 / elapsed.as_secs_f64());
        println!(
            "run {}: p2pd {:.0} files/s, tcp {:.0} files/s",
            run + 1,
            p2pd[run],
            tcp[run]
        );
    }
    let (p, t) = (median(p2pd), median(tcp));
    println!("small files: one folder of {count} × 4 KiB, median of {runs}");
    println!("  p2pd end to end      {p:>8.0} files/s");
    println!(
        "  TCP stream, no fsync {t:>8.0} files/s   ratio p2pd/tcp = {:.3}",
        p / t
    );
}

/// Four transfers at once between the same daemons, against one alone.
fn concurrent(dir: &Path) {
    let mib = env_or("P2PD_BENCH_CONCURRENT_MIB", 256);
    let sources: Vec<PathBuf> = (0..4)
        .map(|i| {
            let path = dir.join(format!("concurrent-{i}.bin"));
            make_file(&path, mib);
            path
        })
        .collect();
    let pair = pair(dir, "concurrent");
    let single = p2pd_transfer(&pair.a, &pair.b, &sources[..1]);
    clear(&pair.received);
    let start = Instant::now();
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|source| {
                scope.spawn(|| p2pd_transfer(&pair.a, &pair.b, std::slice::from_ref(source)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("transfer thread"))
            .collect()
    });
    let all = start.elapsed();
    let bytes = (mib * 1024 * 1024) as u64;
    let single_rate = mbit(bytes, single);
    let aggregate = mbit(bytes * 4, all);
    let slowest = times.iter().max().unwrap().as_secs_f64();
    let fastest = times.iter().min().unwrap().as_secs_f64();
    println!("concurrent: 4 × {mib} MiB at once");
    println!("  one alone            {single_rate:>8.0} Mbit/s");
    println!(
        "  four, aggregate      {aggregate:>8.0} Mbit/s   ratio aggregate/single = {:.3}",
        aggregate / single_rate
    );
    println!(
        "  each finished in {:?} s; slowest/fastest = {:.2}",
        times
            .iter()
            .map(|t| (t.as_secs_f64() * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        slowest / fastest
    );
    for source in sources {
        let _ = std::fs::remove_file(source);
    }
}

fn main() {
    // `cargo bench --bench e2e -- small concurrent` runs those sections; no name runs all
    // (throughput, small, concurrent, buffers, memory, transport).
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| chosen.is_empty() || chosen.iter().any(|c| c == name);
    let base = std::env::var("P2PD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    if wanted("throughput") {
        throughput(dir.path());
    }
    if wanted("small") {
        small_files(dir.path());
    }
    if wanted("concurrent") {
        concurrent(dir.path());
    }
    if wanted("buffers") {
        buffers(dir.path());
    }
    if wanted("memory") {
        memory(dir.path());
    }
    if wanted("transport") {
        transport(dir.path());
    }
}
