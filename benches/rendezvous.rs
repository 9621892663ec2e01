//! The rendezvous under load, issue #24's targets: `cargo bench --bench rendezvous`.
//!
//! One run measures, with the same load generator (this process, the real
//! `RendezvousClient`), `p2pd rendezvous` processes on loopback:
//!   memory  — one instance, the in-memory store (the baseline);
//!   redis   — one instance on a `redis-server` this bench starts;
//!   redis×2 — two instances on that Redis, every allocator on one and its claimer on
//!             the other, so every relay crosses Redis.
//! A pairing is what a transfer costs the rendezvous before the peers connect: the
//! allocator connects and allocates, the claimer connects and claims, both hear
//! `paired`, each relays two 32-byte bodies (SPAKE2's message and the confirmation) and
//! reads the other's two, and both close. `CONCURRENT` pairings run at once, `PAIRINGS`
//! in all. Printed: pairings/s, p50 and p99 latency (allocator's connect to both sides
//! holding the other's two bodies), failed pairings, CPU seconds per 1,000 pairings of
//! each instance, of Redis, and of the load generator, Redis commands per pairing
//! (`INFO commandstats`), and the ratios the issue sets targets for. The closed loop keeps
//! 200 pairings in flight, so its latency is mostly queueing (200 ÷ the rate); a second,
//! open-loop run starts 500 pairings a second to show the latency of a rendezvous that
//! is not saturated. Needs
//! /usr/bin/redis-server (Debian: redis-server); without it only `memory` runs.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pd::rendezvous::client::RendezvousClient;

const PAIRINGS: usize = 4_000;
const CONCURRENT: usize = 200;
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// The unsaturated run: pairings started at this rate, this many.
const PACED_RATE: f64 = 500.0;
const PACED: usize = 2_000;

struct Process {
    child: Child,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    fn cpu(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_server(dir: &std::path::Path) -> Option<(Process, String)> {
    if !std::path::Path::new(REDIS_SERVER).exists() {
        eprintln!("no {REDIS_SERVER}: only the memory store is measured");
        return None;
    }
    let port = free_port();
    let child = Command::new(REDIS_SERVER)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    wait_listening(port);
    Some((Process { child }, format!("redis://127.0.0.1:{port}")))
}

/// A `p2pd rendezvous` whose per-address limits do not throttle a load from one address.
fn instance(store: &str) -> (Process, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .args(["rendezvous", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", store])
        .args(["--max-connections", "20000"])
        .args(["--max-connections-per-address", "20000"])
        .args(["--max-pairs-per-address", "10000"])
        .args(["--requests-per-minute", "10000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("p2pd rendezvous starts");
    wait_listening(port);
    let url = format!("ws://127.0.0.1:{port}");
    // A Redis store serves once it reached Redis and subscribed (`/healthz` 200).
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(addr) {
        assert!(
            Instant::now() < deadline,
            "the instance never became healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Process { child }, url)
}

fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// One pairing; its latency, or why it failed.
async fn pairing(allocator_url: &str, claimer_url: &str) -> Result<Duration, String> {
    let started = Instant::now();
    fn fail(what: &'static str) -> impl Fn(p2pd::rendezvous::SignalError) -> String {
        move |e| format!("{what}: {e}")
    }
    let mut allocator = RendezvousClient::connect(allocator_url)
        .await
        .map_err(fail("connect"))?;
    let (nameplate, _) = allocator.allocate().await.map_err(fail("allocate"))?;
    let mut claimer = RendezvousClient::connect(claimer_url)
        .await
        .map_err(fail("connect"))?;
    let side = |mut client: RendezvousClient, first: bool| async move {
        if first {
            client.wait_for_peer().await?;
        }
        for body in [[1u8; 32], [2u8; 32]] {
            client.relay(&body).await?;
        }
        for _ in 0..2 {
            client.recv_relay().await?;
        }
        client.close().await;
        Ok::<_, p2pd::rendezvous::SignalError>(())
    };
    claimer.claim(nameplate).await.map_err(fail("claim"))?;
    let (a, b) = tokio::join!(side(allocator, true), side(claimer, false));
    a.map_err(fail("allocator"))?;
    b.map_err(fail("claimer"))?;
    Ok(started.elapsed())
}

struct Outcome {
    name: &'static str,
    rate: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
    /// CPU seconds per 1,000 pairings: each instance, Redis, the load generator.
    instances_cpu: Vec<f64>,
    redis_cpu: Option<f64>,
    load_cpu: f64,
    commands: Option<f64>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn redis_reset(url: &str) {
    if let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) {
        let _: redis::RedisResult<()> = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn);
    }
}

/// Commands Redis ran since the last reset (`INFO commandstats`), the INFO call itself
/// excepted.
fn redis_commands(url: &str) -> Option<u64> {
    let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .ok()?;
    let mut total = 0;
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        if line.starts_with("cmdstat_info:") || line.starts_with("cmdstat_config") {
            continue;
        }
        let calls = line
            .split(&[':', ','][..])
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        total += calls;
    }
    Some(total)
}

fn run(
    runtime: &tokio::runtime::Runtime,
    name: &'static str,
    instances: &[(Process, String)],
    redis: Option<&(Process, String)>,
) -> Outcome {
    let urls: Arc<Vec<String>> = Arc::new(instances.iter().map(|(_, u)| u.clone()).collect());
    // A warm-up, out of the figures.
    runtime.block_on(async {
        for _ in 0..20 {
            let _ = pairing(&urls[0], &urls[urls.len() - 1]).await;
        }
    });
    if let Some((_, url)) = redis {
        redis_reset(url);
    }
    let cpu_before: Vec<f64> = instances.iter().map(|(p, _)| p.cpu()).collect();
    let redis_before = redis.map(|(p, _)| p.cpu());
    let load_before = cpu_seconds("/proc/self/stat");
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = runtime.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers = (0..CONCURRENT).map(|_| {
            let (urls, next) = (urls.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < PAIRINGS {
                    done.push(pairing(&urls[0], &urls[urls.len() - 1]).await);
                }
                done
            })
        });
        let mut all = Vec::with_capacity(PAIRINGS);
        for worker in futures_util::future::join_all(workers).await {
            all.extend(worker.expect("a load worker"));
        }
        all
    });
    let wall = started.elapsed();
    let per_thousand = |seconds: f64| seconds * 1000.0 / PAIRINGS as f64;
    let instances_cpu = instances
        .iter()
        .zip(&cpu_before)
        .map(|((p, _), before)| per_thousand(p.cpu() - before))
        .collect();
    let redis_cpu = redis
        .zip(redis_before)
        .map(|((p, _), before)| per_thousand(p.cpu() - before));
    let load_cpu = per_thousand(cpu_seconds("/proc/self/stat") - load_before);
    let commands = redis
        .and_then(|(_, url)| redis_commands(url))
        .map(|n| n as f64 / PAIRINGS as f64);
    let mut latencies: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    latencies.sort();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failures.first() {
        eprintln!("{name}: {} failed, the first: {first}", failures.len());
    }
    Outcome {
        name,
        rate: latencies.len() as f64 / wall.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        failed: failures.len(),
        instances_cpu,
        redis_cpu,
        load_cpu,
        commands,
    }
}

/// p50 and p99 latency of `count` pairings started at `rate` a second (open loop: a
/// pairing starts on time whether or not earlier ones finished), and how many failed:
/// the latency of a rendezvous that is not saturated.
fn paced(
    runtime: &tokio::runtime::Runtime,
    instances: &[(Process, String)],
    rate: f64,
    count: usize,
) -> (Duration, Duration, usize) {
    let urls: Arc<Vec<String>> = Arc::new(instances.iter().map(|(_, u)| u.clone()).collect());
    let results: Vec<Result<Duration, String>> = runtime.block_on(async {
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut started = Vec::with_capacity(count);
        for _ in 0..count {
            ticks.tick().await;
            let urls = urls.clone();
            started.push(tokio::spawn(async move {
                pairing(&urls[0], &urls[urls.len() - 1]).await
            }));
        }
        let mut all = Vec::with_capacity(count);
        for pairing in started {
            all.push(pairing.await.expect("a pairing task"));
        }
        all
    });
    let mut latencies: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    latencies.sort();
    let failed = results.len() - latencies.len();
    (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        failed,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches: nothing to list here.
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let redis = redis_server(dir.path());
    let mut outcomes = Vec::new();
    // Latency unsaturated: pairings started at PACED_RATE a second, about 200 in flight
    // at once only if each took 0.4 s.
    let mut unsaturated = Vec::new();
    {
        let memory = [instance("memory")];
        outcomes.push(run(&runtime, "memory", &memory, None));
        unsaturated.push(("memory", paced(&runtime, &memory, PACED_RATE, PACED)));
    }
    if let Some(redis) = &redis {
        {
            let one = [instance(&redis.1)];
            outcomes.push(run(&runtime, "redis", &one, Some(redis)));
            unsaturated.push(("redis", paced(&runtime, &one, PACED_RATE, PACED)));
        }
        let two = [instance(&redis.1), instance(&redis.1)];
        outcomes.push(run(&runtime, "redis×2", &two, Some(redis)));
        unsaturated.push(("redis×2", paced(&runtime, &two, PACED_RATE, PACED)));
    }
    println!(
        "{PAIRINGS} pairings, {CONCURRENT} at once, {} cores, release build",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<8} {:>11} {:>8} {:>8} {:>6} {:>16} {:>10} {:>10} {:>11}",
        "store",
        "pairings/s",
        "p50 ms",
        "p99 ms",
        "failed",
        "instance CPU-s",
        "redis CPU-s",
        "load CPU-s",
        "redis cmds"
    );
    for o in &outcomes {
        let instances = o
            .instances_cpu
            .iter()
            .map(|c| format!("{c:.3}"))
            .collect::<Vec<_>>()
            .join("+");
        println!(
            "{:<8} {:>11.0} {:>8.1} {:>8.1} {:>6} {:>16} {:>10} {:>10.3} {:>11}",
            o.name,
            o.rate,
            o.p50.as_secs_f64() * 1000.0,
            o.p99.as_secs_f64() * 1000.0,
            o.failed,
            instances,
            o.redis_cpu.map_or("-".into(), |c| format!("{c:.3}")),
            o.load_cpu,
            o.commands.map_or("-".into(), |c| format!("{c:.1}")),
        );
    }
    println!("(CPU-s per 1,000 pairings; redis cmds per pairing)");
    for (name, (p50, p99, failed)) in &unsaturated {
        println!(
            "{name}: {PACED} pairings started at {PACED_RATE}/s: p50 {:.1} ms, p99 {:.1} ms, {failed} failed",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    let base = &outcomes[0];
    let base_cpu: f64 = base.instances_cpu.iter().sum();
    for o in &outcomes[1..] {
        let cpu: f64 = o.instances_cpu.iter().sum::<f64>() + o.redis_cpu.unwrap_or(0.0);
        println!(
            "{}: {:.2} × memory's pairings/s (target ≥ 0.75), {:.2} × its CPU per pairing with Redis's (target ≤ 2), {} failed (target 0), p99 {:.1} ms (target < 50)",
            o.name,
            o.rate / base.rate,
            cpu / base_cpu,
            o.failed,
            o.p99.as_secs_f64() * 1000.0
        );
    }
}
