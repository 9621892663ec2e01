//! Real networks for tests and benchmarks: network namespaces joined by veth links, home
//! routers doing NAT with iptables, an "internet" namespace holding the rendezvous and a
//! coturn relay, one `p2pd` per home, and impaired links (random loss with iptables
//! `statistic`, a rate limit with `tc tbf`, delay with a userspace delayer, since this
//! kernel has no `netem`). Needs root, `ip`, `iptables`, `tc`, `ethtool` and `turnserver`.
//! Every namespace, and with it every link, rule and process in it, is removed on drop,
//! even when the test fails.
//!
//! Shared by `tests/it/netns.rs` and `benches/paths.rs` through `#[path]`.
#![allow(dead_code)] // each includer uses its own part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

pub mod timing;

pub const P2P: &str = env!("CARGO_BIN_EXE_p2p");
pub const P2PD: &str = env!("CARGO_BIN_EXE_p2pd");
pub const INTERNET: &str = "203.0.113.1";
const TURN_SECRET: &str = "p2pd-test-shared-secret";
/// The port a home router forwards to its first host, for the TCP baseline.
pub const TCP_PORT: u16 = 5001;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nat {
    /// MASQUERADE keeping source ports where it can, as most home routers do.
    Ordinary,
    /// MASQUERADE --random-fully: a new random port per destination, which defeats STUN.
    PortRandomizing,
}

/// What a router does to the packets it forwards, in both directions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Share of forwarded packets dropped at random, in percent.
    pub loss_percent: f64,
    /// Added to each direction on the router's uplink.
    pub one_way_delay: Duration,
    /// Rate limit of each direction, in Mbit/s (token bucket).
    pub rate_mbit: Option<u32>,
}

/// The namespaces of one test and the processes and delayers running in them.
pub struct Net {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    delayers: Vec<Delayer>,
    pub dir: tempfile::TempDir,
}

/// Fails a test that cannot run here, saying why. Privileged tests are `#[ignore]`d, so a
/// plain `cargo test` lists them as ignored; whoever runs them (`--include-ignored`, as CI
/// does as root) must get a failure, not a silent pass, when the machine cannot run them.
pub fn skip(why: &str) -> ! {
    panic!(
        "this test cannot run here: {why} (run it as root with the tools installed, as CI does)"
    );
}

impl Net {
    /// None, after saying why, when this machine cannot build namespaces.
    pub fn new() -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tools = ["ip", "iptables", "tc", "ethtool", "turnserver"];
        if !root || !tools.iter().all(|t| have(t)) {
            skip(&format!("needs root and {}", tools.join(", ")));
        }
        let prefix = format!(
            "p2pt{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Some(Net {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            delayers: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        })
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn add(&mut self, name: &str) {
        let ns = self.ns(name);
        sh(&format!("ip netns add {ns}"));
        self.namespaces.push(ns);
        self.exec(name, "ip link set lo up");
    }

    /// What `command` prints inside `name`.
    pub fn output(&self, name: &str, command: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), "sh", "-ec", command])
            .output()
            .expect("run in namespace");
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn exec(&self, name: &str, command: &str) {
        sh(&format!(
            "ip netns exec {} sh -ec '{command}'",
            self.ns(name)
        ));
    }

    /// A veth pair between two namespaces, without checksum and segmentation offloads: a
    /// delayer forwards frames as they are on the wire (an offloaded frame has no
    /// checksum yet), and packets of up to 64 KiB would pass a rate limit and a loss rule
    /// as one.
    fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        // Created in the root namespace first, so the names must be unique machine-wide
        // (tests run in parallel); renamed as they move.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (tmp_a, tmp_b) = (format!("p2pv{n}a"), format!("p2pv{n}b"));
        sh(&format!(
            "ip link add {tmp_a} type veth peer name {tmp_b} && ip link set {tmp_a} netns {} name {a_if} && ip link set {tmp_b} netns {} name {b_if}",
            self.ns(a),
            self.ns(b)
        ));
        for (ns, dev) in [(a, a_if), (b, b_if)] {
            self.exec(
                ns,
                &format!("ethtool -K {dev} tx off tso off gso off gro off tx-udp-segmentation off >/dev/null 2>&1 || ethtool -K {dev} tx off tso off gso off gro off >/dev/null; ip link set {dev} up"),
            );
        }
    }

    /// The internet: a bridge holding the rendezvous and coturn at 203.0.113.1.
    pub fn internet(&mut self) {
        self.add("inet");
        self.exec(
            "inet",
            &format!("ip link add br0 type bridge && ip link set br0 up && ip addr add {INTERNET}/24 dev br0"),
        );
    }

    /// A home router `router` on the internet at `wan_ip`, with a LAN `lan_net`.1/24.
    pub fn router(&mut self, router: &str, wan_ip: &str, lan_net: &str, nat: Nat) {
        self.impaired_router(router, wan_ip, lan_net, nat, Impairment::default());
    }

    /// As [`Net::router`], with an uplink that loses, delays and limits packets. The
    /// delay sits on a wire namespace between the router and the internet, where a
    /// delayer forwards frames between two interfaces.
    pub fn impaired_router(
        &mut self,
        router: &str,
        wan_ip: &str,
        lan_net: &str,
        nat: Nat,
        impairment: Impairment,
    ) {
        self.add(router);
        let inet_if = format!("{router}w");
        if impairment.one_way_delay.is_zero() {
            self.link("inet", &inet_if, router, "wan");
        } else {
            let wire = format!("{router}d");
            self.add(&wire);
            self.link(router, "wan", &wire, "home");
            self.link(&wire, "world", "inet", &inet_if);
            self.exec(
                &wire,
                "ip link set home promisc on && ip link set world promisc on",
            );
            let delayer =
                Delayer::start(&self.ns(&wire), "home", "world", impairment.one_way_delay);
            self.delayers.push(delayer);
        }
        self.exec("inet", &format!("ip link set {inet_if} master br0"));
        let random = if nat == Nat::PortRandomizing {
            " --random-fully"
        } else {
            ""
        };
        self.exec(
            router,
            &format!(
                "ip addr add {wan_ip}/24 dev wan && ip link add lan type bridge && ip link set lan up && ip addr add {lan_net}.1/24 dev lan && sysctl -qw net.ipv4.ip_forward=1 && iptables -t nat -A POSTROUTING -o wan -j MASQUERADE{random} && iptables -A INPUT -i wan -m conntrack --ctstate NEW -j DROP"
            ),
        );
        if impairment.loss_percent > 0.0 {
            let probability = impairment.loss_percent / 100.0;
            self.exec(
                router,
                &format!("iptables -A FORWARD -m statistic --mode random --probability {probability} -j DROP"),
            );
        }
        if let Some(rate) = impairment.rate_mbit {
            // Upload on the uplink, download on the LAN bridge; a queue of about 50 ms,
            // as a home router has.
            for dev in ["wan", "lan"] {
                self.exec(
                    router,
                    &format!(
                        "tc qdisc add dev {dev} root tbf rate {rate}mbit burst 64kb latency 50ms"
                    ),
                );
            }
        }
    }

    /// A machine `host` at `ip` on `router`'s LAN.
    pub fn host(&mut self, host: &str, router: &str, ip: &str) {
        self.add(host);
        let router_if = format!("{host}l");
        self.link(router, &router_if, host, "eth0");
        self.exec(router, &format!("ip link set {router_if} master lan"));
        let gateway = format!(
            "{}.1",
            ip.rsplit_once('.').map(|(net, _)| net).unwrap_or(ip)
        );
        self.exec(
            host,
            &format!("ip addr add {ip}/24 dev eth0 && ip route add default via {gateway}"),
        );
    }

    /// Forwards TCP port [`TCP_PORT`] on `router`'s uplink to `host_ip`, for a baseline
    /// over the same path as the transfer.
    pub fn forward_tcp(&self, router: &str, host_ip: &str) {
        self.exec(
            router,
            &format!("iptables -t nat -A PREROUTING -i wan -p tcp --dport {TCP_PORT} -j DNAT --to-destination {host_ip}:{TCP_PORT}"),
        );
    }

    pub fn spawn(&mut self, name: &str, program: &str, args: &[&str], log: &Path) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), program])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("P2PD_NETNS_LOG").unwrap_or("error,p2pd=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
    }

    /// coturn and the rendezvous on the internet, the rendezvous handing out both. coturn
    /// has the `user-quota` docs/DEPLOY.md recommends, so relayed figures are measured
    /// under it.
    pub fn services(&mut self) {
        let conf = self.dir.path().join("turnserver.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip={INTERNET}\nrelay-ip={INTERNET}\nlistening-port=3478\nmin-port=49152\nmax-port=49999\n\
                 use-auth-secret\nstatic-auth-secret={TURN_SECRET}\nrealm=p2pd.test\nuser-quota=12\n\
                 no-tls\nno-dtls\nno-cli\nno-multicast-peers\nno-loopback-peers\n\
                 denied-peer-ip=10.0.0.0-10.255.255.255\ndenied-peer-ip=172.16.0.0-172.31.255.255\n\
                 denied-peer-ip=192.168.0.0-192.168.255.255\ndenied-peer-ip=127.0.0.0-127.255.255.255\n\
                 pidfile={}\nlog-file=stdout\n",
                self.dir.path().join("turn.pid").display()
            ),
        )
        .expect("write coturn config");
        let log = self.dir.path().join("turn.log");
        self.spawn(
            "inet",
            "turnserver",
            &["-c", conf.to_str().expect("utf-8 path")],
            &log,
        );
        let secret = self.dir.path().join("turn.secret");
        std::fs::write(&secret, TURN_SECRET).expect("write secret");
        // The ICE servers come from the rendezvous's config file, the address from a flag:
        // both ways of configuring it, merged.
        let rendezvous_conf = self.dir.path().join("rendezvous.toml");
        std::fs::write(
            &rendezvous_conf,
            format!(
                "stun = [\"stun:{INTERNET}:3478\"]\nturn = [\"turn:{INTERNET}:3478\"]\n\
                 turn_secret_file = \"{}\"\nturn_credential_ttl_secs = 600\n",
                secret.display()
            ),
        )
        .expect("write rendezvous config");
        let log = self.dir.path().join("rendezvous.log");
        self.spawn(
            "inet",
            P2PD,
            &[
                "rendezvous",
                "--config",
                rendezvous_conf.to_str().expect("utf-8 path"),
                "--listen",
                &format!("{INTERNET}:9009"),
            ],
            &log,
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    /// A daemon on `host`, returning its socket.
    pub fn daemon(&mut self, host: &str) -> PathBuf {
        self.daemon_with(host, host, &[])
    }

    /// Another daemon on `host`, with its own home `name` and `extra` flags.
    pub fn daemon_with(&mut self, host: &str, name: &str, extra: &[&str]) -> PathBuf {
        let rendezvous = format!("ws://{INTERNET}:9009");
        let extra: Vec<&str> = ["--rendezvous", rendezvous.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        self.daemon_in_home(host, name, &extra)
    }

    /// A daemon on `host` as a person starts it with no settings: its own embedded
    /// rendezvous (on loopback), LAN discovery on.
    pub fn daemon_with_defaults(&mut self, host: &str) -> PathBuf {
        self.daemon_in_home(host, host, &[])
    }

    fn daemon_in_home(&mut self, host: &str, name: &str, extra: &[&str]) -> PathBuf {
        let home = self.dir.path().join(name);
        std::fs::create_dir_all(home.join("dl")).expect("download dir");
        let socket = home.join("p2pd.sock");
        let log = home.join("p2pd.log");
        let args = [
            "--socket".to_owned(),
            socket.display().to_string(),
            "--download-dir".to_owned(),
            home.join("dl").display().to_string(),
            "--state-dir".to_owned(),
            home.join("state").display().to_string(),
        ];
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        self.spawn(host, P2PD, &args, &log);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "p2pd did not start on {host}");
            std::thread::sleep(Duration::from_millis(20));
        }
        socket
    }

    /// Where `host`'s daemon saves files.
    pub fn downloads(&self, host: &str) -> PathBuf {
        self.dir.path().join(host).join("dl")
    }

    /// The last lines of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in walk(self.dir.path()) {
            if entry.extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("== {}\n", entry.display()));
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                out.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                out.push('\n');
            }
        }
        out
    }

    /// Runs `work` on a thread inside `name`'s network namespace: sockets it opens live
    /// there.
    pub fn inside<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = self.ns(name);
        std::thread::spawn(move || {
            enter(&ns);
            work()
        })
    }

    /// A bulk TCP flow from `from` to `to_ip`:[`TCP_PORT`] (received on `to`) with
    /// `congestion` control, running until [`TcpFlow::stop`]: competing traffic.
    pub fn tcp_flow(&self, (from, to, to_ip): (&str, &str, &str), congestion: &str) -> TcpFlow {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let receiver = self.inside(to, move || {
            let listener = std::net::TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("listen");
            ready_tx.send(()).expect("ready");
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buffer = vec![0u8; 1 << 16];
            let mut counts = Vec::new();
            let mut total = 0u64;
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n as u64;
                        counts.push((Instant::now(), total));
                    }
                }
            }
            counts
        });
        ready_rx.recv().expect("receiver ready");
        let (address, congestion) = (format!("{to_ip}:{TCP_PORT}"), congestion.to_owned());
        let flag = stop.clone();
        let sender = self.inside(from, move || {
            let mut stream = std::net::TcpStream::connect(&address).expect("connect");
            set_congestion(&stream, &congestion);
            let buffer = vec![7u8; 1 << 16];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if stream.write_all(&buffer).is_err() {
                    break;
                }
            }
        });
        TcpFlow {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Copies `source` over TCP from `from` to `to_ip`:[`TCP_PORT`], received on `to` into
    /// `target` (written and synced, as p2pd does); returns the time from connect to the
    /// receiver's sync.
    pub fn tcp_copy(
        &self,
        (from, to, to_ip): (&str, &str, &str),
        congestion: &str,
        source: &Path,
        target: &Path,
    ) -> Duration {
        let (ready_tx, ready_rx) = mpsc::channel();
        let target = target.to_owned();
        let receiver = self.inside(to, move || {
            let listener = std::net::TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("listen");
            ready_tx.send(()).expect("ready");
            let (mut stream, _) = listener.accept().expect("accept");
            let mut file = std::fs::File::create(&target).expect("create target");
            std::io::copy(&mut stream, &mut file).expect("receive");
            file.sync_all().expect("sync");
            Instant::now()
        });
        ready_rx.recv().expect("receiver ready");
        let source = source.to_owned();
        let congestion = congestion.to_owned();
        let address = format!("{to_ip}:{TCP_PORT}");
        let sender = self.inside(from, move || {
            let started = Instant::now();
            let mut stream = std::net::TcpStream::connect(&address).expect("connect");
            set_congestion(&stream, &congestion);
            let mut file = std::fs::File::open(&source).expect("open source");
            let mut buffer = vec![0u8; 1 << 16];
            loop {
                let n = file.read(&mut buffer).expect("read source");
                if n == 0 {
                    break;
                }
                stream.write_all(&buffer[..n]).expect("send");
            }
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            started
        });
        let started = sender.join().expect("sender thread");
        let finished = receiver.join().expect("receiver thread");
        finished - started
    }
}

/// A running [`Net::tcp_flow`].
pub struct TcpFlow {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<Vec<(Instant, u64)>>>,
}

impl TcpFlow {
    /// Stops the flow; bytes received by then, with when.
    pub fn stop(mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        self.receiver
            .take()
            .map(|r| r.join().expect("receiver thread"))
            .unwrap_or_default()
    }
}

/// The sender's congestion control for one socket (root may pick any the kernel has,
/// whatever `tcp_allowed_congestion_control` says).
fn set_congestion(stream: &std::net::TcpStream, name: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: the name buffer outlives the call and its length is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_CONGESTION {name}: {}",
        std::io::Error::last_os_error()
    );
}

fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open namespace");
    // SAFETY: setns only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for delayer in &mut self.delayers {
            delayer.stop();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn sh(command: &str) {
    let out = Command::new("sh")
        .args(["-ec", command])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Forwards every frame between two interfaces of one namespace, each after a fixed
/// delay, in order: a wire with latency. Raw packet sockets, so it works below IP and
/// NAT, and nothing is dropped on the way (large socket buffers, an unbounded queue).
struct Delayer {
    running: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Delayer {
    fn start(ns: &str, a: &str, b: &str, delay: Duration) -> Delayer {
        let (ns, a_name, b_name) = (ns.to_owned(), a.to_owned(), b.to_owned());
        let (a, b) = std::thread::spawn(move || {
            enter(&ns);
            (packet_socket(&a_name), packet_socket(&b_name))
        })
        .join()
        .expect("open packet sockets");
        let (a, b) = (Arc::new(a), Arc::new(b));
        let running = Arc::new(AtomicBool::new(true));
        let mut threads = Vec::new();
        for (from, to) in [(a.clone(), b.clone()), (b, a)] {
            let (queue_tx, queue_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let flag = running.clone();
            threads.push(std::thread::spawn(move || {
                let mut frame = vec![0u8; 65536];
                while flag.load(Ordering::Relaxed) {
                    // SAFETY: the buffer outlives the call and its length is passed.
                    let n = unsafe {
                        libc::recv(from.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len(), 0)
                    };
                    if n > 0 {
                        let due = Instant::now() + delay;
                        if queue_tx.send((due, frame[..n as usize].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }));
            let flag = running.clone();
            threads.push(std::thread::spawn(move || {
                while flag.load(Ordering::Relaxed) {
                    let Ok((due, frame)) = queue_rx.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    // SAFETY: the frame outlives the call and its length is passed.
                    unsafe { libc::send(to.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                }
            }));
        }
        Delayer { running, threads }
    }

    fn stop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A raw packet socket bound to `interface` that sees only frames arriving on it, with a
/// receive timeout so its reader can notice a stop.
fn packet_socket(interface: &str) -> OwnedFd {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by socket and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(interface).expect("interface name");
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {interface}");
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    // SAFETY: address is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind packet socket: {}",
        std::io::Error::last_os_error()
    );
    let one: libc::c_int = 1;
    let buffer: libc::c_int = 16 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    for (level, option, value, size) in [
        (
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&buffer as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&buffer as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>(),
        ),
    ] {
        // SAFETY: value points at a live value of the given size.
        let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, option, value, size as u32) };
        assert_eq!(
            rc,
            0,
            "setsockopt {option}: {}",
            std::io::Error::last_os_error()
        );
    }
    fd
}

/// A file of `size` pseudo-random bytes.
pub fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("write source file");
    path
}

/// What one `p2p send` → `p2p receive` did.
pub struct Outcome {
    pub ok: bool,
    pub events: Vec<serde_json::Value>,
    /// From the send request to the receiving CLI's exit after the verified rename.
    pub elapsed: Duration,
    /// The data phase: from the receiver's first progress report with bytes done (when,
    /// after the start, and how many bytes) to its exit.
    pub first_progress: Option<(Duration, u64)>,
}

impl Outcome {
    /// Mbit/s of the data phase, `bytes` in all: rendezvous, ICE and DTLS excluded.
    pub fn data_mbit(&self, bytes: u64) -> Option<f64> {
        let (at, done) = self.first_progress?;
        let span = self.elapsed.checked_sub(at)?.as_secs_f64();
        (span > 0.0).then(|| (bytes - done.min(bytes)) as f64 * 8.0 / span / 1e6)
    }
}

impl Outcome {
    /// The reported path: relayed or not, and its description.
    pub fn route(&self) -> Option<(bool, String)> {
        self.events.iter().find(|e| e["event"] == "route").map(|e| {
            (
                e["relayed"].as_bool().unwrap_or(false),
                e["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
    }
}

/// Starts `p2p send` on the daemon at `a` and, with its code, `p2p receive --yes` on the
/// one at `b` (both `--json`, the receiver's events piped), without waiting for them.
pub fn start_transfer(a: &Path, b: &Path, file: &Path, flags: &[&str]) -> (Child, Child) {
    let mut send = Command::new(P2P)
        .arg("--socket")
        .arg(a)
        .args(["send", "--json"])
        .args(flags)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn p2p send");
    let mut first = String::new();
    BufReader::new(send.stdout.as_mut().expect("piped stdout"))
        .read_line(&mut first)
        .expect("read the send's first event");
    let created: serde_json::Value = serde_json::from_str(&first).expect(&first);
    let code = created["code"].as_str().expect("a code").to_owned();
    let receive = Command::new(P2P)
        .arg("--socket")
        .arg(b)
        .args(["receive", "--yes", "--json"])
        .args(flags)
        .arg(&code)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn p2p receive");
    (send, receive)
}

/// Sends `file` from the daemon at `a` to the one at `b` with the real CLI.
pub fn transfer(a: &Path, b: &Path, file: &Path, flags: &[&str]) -> Outcome {
    let started = Instant::now();
    let (mut send, mut receive) = start_transfer(a, b, file, flags);
    let mut events: Vec<serde_json::Value> = Vec::new();
    let mut first_progress = None;
    let stdout = receive.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let done = event["bytes_done"].as_u64().unwrap_or(0);
        if first_progress.is_none() && event["event"] == "progress" && done > 0 {
            first_progress = Some((started.elapsed(), done));
        }
        events.push(event);
    }
    let status = receive.wait().expect("run p2p receive");
    let elapsed = started.elapsed();
    let _ = send.kill();
    let _ = send.wait();
    Outcome {
        ok: status.success(),
        events,
        elapsed,
        first_progress,
    }
}

/// Two homes, each behind its own NAT router, the internet between them, a daemon in
/// each: (net, socket of h1's daemon, socket of h2's). The path between them is impaired
/// in one place, h1's router, as when one side sits on a poor link.
pub fn two_homes(nat: Nat, impairment: Impairment) -> Option<(Net, PathBuf, PathBuf)> {
    let mut net = Net::new()?;
    net.internet();
    net.impaired_router("r1", "203.0.113.11", "192.168.1", nat, impairment);
    net.router("r2", "203.0.113.12", "192.168.2", nat);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r2", "192.168.2.2");
    net.services();
    let a = net.daemon("h1");
    let b = net.daemon("h2");
    Some((net, a, b))
}
