//! Real networks: network namespaces with veth links, routers doing NAT with iptables, a
//! rendezvous and a coturn relay on an "internet" namespace, and one `p2pd` per home.
//! Needs root, `ip`, `iptables` and `turnserver` (coturn); says "skipped" otherwise. Every
//! namespace (and with it every link, rule and process bound to it) is removed on drop, even
//! when the test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::support::random_file;

const P2P: &str = env!("CARGO_BIN_EXE_p2p");
const P2PD: &str = env!("CARGO_BIN_EXE_p2pd");
const INTERNET: &str = "203.0.113.1";
const TURN_SECRET: &str = "p2pd-test-shared-secret";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The namespaces of one test and the processes running in them.
struct Net {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Nat {
    /// MASQUERADE keeping source ports where it can, as most home routers do.
    Ordinary,
    /// MASQUERADE --random-fully: a new random port per destination, which defeats STUN.
    PortRandomizing,
}

impl Net {
    fn new() -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !have("ip") || !have("iptables") || !have("turnserver") {
            println!("skipped: needs root, ip, iptables and turnserver (coturn)");
            return None;
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
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn add(&mut self, name: &str) {
        let ns = self.ns(name);
        sh(&format!("ip netns add {ns}"));
        self.namespaces.push(ns.clone());
        self.exec(name, "ip link set lo up");
    }

    fn exec(&self, name: &str, command: &str) {
        sh(&format!(
            "ip netns exec {} sh -ec '{command}'",
            self.ns(name)
        ));
    }

    /// A veth pair between two namespaces.
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
        self.exec(a, &format!("ip link set {a_if} up"));
        self.exec(b, &format!("ip link set {b_if} up"));
    }

    /// The internet: a bridge holding the rendezvous and coturn at 203.0.113.1.
    fn internet(&mut self) {
        self.add("inet");
        self.exec(
            "inet",
            &format!("ip link add br0 type bridge && ip link set br0 up && ip addr add {INTERNET}/24 dev br0"),
        );
    }

    /// A home router `router` on the internet at `wan_ip`, with a LAN `lan_net`.1/24.
    fn router(&mut self, router: &str, wan_ip: &str, lan_net: &str, nat: Nat) {
        self.add(router);
        let inet_if = format!("{router}w");
        self.link("inet", &inet_if, router, "wan");
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
    }

    /// A machine `host` at `ip` on `router`'s LAN.
    fn host(&mut self, host: &str, router: &str, ip: &str) {
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

    fn spawn(&mut self, name: &str, program: &str, args: &[&str], log: &Path) -> &Child {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), program])
            .args(args)
            .env("RUST_LOG", "error,p2pd=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
        self.children.last().unwrap()
    }

    /// coturn and the rendezvous on the internet, the rendezvous handing out both.
    fn services(&mut self) {
        let conf = self.dir.path().join("turnserver.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip={INTERNET}\nrelay-ip={INTERNET}\nlistening-port=3478\nmin-port=49152\nmax-port=49999\n\
                 use-auth-secret\nstatic-auth-secret={TURN_SECRET}\nrealm=p2pd.test\n\
                 no-tls\nno-dtls\nno-cli\nno-multicast-peers\nno-loopback-peers\n\
                 denied-peer-ip=10.0.0.0-10.255.255.255\ndenied-peer-ip=172.16.0.0-172.31.255.255\n\
                 denied-peer-ip=192.168.0.0-192.168.255.255\ndenied-peer-ip=127.0.0.0-127.255.255.255\n\
                 pidfile={}\nlog-file=stdout\n",
                self.dir.path().join("turn.pid").display()
            ),
        )
        .unwrap();
        let log = self.dir.path().join("turn.log");
        self.spawn("inet", "turnserver", &["-c", conf.to_str().unwrap()], &log);
        let secret = self.dir.path().join("turn.secret");
        std::fs::write(&secret, TURN_SECRET).unwrap();
        let log = self.dir.path().join("rendezvous.log");
        self.spawn(
            "inet",
            P2PD,
            &[
                "rendezvous",
                "--listen",
                &format!("{INTERNET}:9009"),
                "--stun",
                &format!("stun:{INTERNET}:3478"),
                "--turn",
                &format!("turn:{INTERNET}:3478"),
                "--turn-secret-file",
                secret.to_str().unwrap(),
            ],
            &log,
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    /// A daemon on `host`, returning its socket.
    fn daemon(&mut self, host: &str) -> PathBuf {
        let home = self.dir.path().join(host);
        std::fs::create_dir_all(home.join("dl")).unwrap();
        let socket = home.join("p2pd.sock");
        let log = home.join("p2pd.log");
        let args = [
            "--socket",
            socket.to_str().unwrap(),
            "--download-dir",
            home.join("dl").to_str().unwrap(),
            "--state-dir",
            home.join("state").to_str().unwrap(),
            "--rendezvous",
            &format!("ws://{INTERNET}:9009"),
        ]
        .map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(host, P2PD, &args, &log);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "p2pd did not start on {host}");
            std::thread::sleep(Duration::from_millis(20));
        }
        socket
    }

    fn logs(&self) -> String {
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
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(command: &str) {
    let out = Command::new("sh").args(["-ec", command]).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `file` from the daemon at `a` to the one at `b` with the real CLI and returns the
/// receiver's events.
fn transfer(a: &Path, b: &Path, file: &Path, flags: &[&str]) -> (bool, Vec<serde_json::Value>) {
    let mut send = Command::new(P2P)
        .arg("--socket")
        .arg(a)
        .args(["send", "--json"])
        .args(flags)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(send.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&first).expect(&first);
    let code = created["code"].as_str().unwrap().to_owned();
    let out = Command::new(P2P)
        .arg("--socket")
        .arg(b)
        .args(["receive", "--yes", "--json"])
        .args(flags)
        .arg(&code)
        .output()
        .unwrap();
    let _ = send.kill();
    let _ = send.wait();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.success(), events)
}

fn route(events: &[serde_json::Value]) -> Option<(bool, String)> {
    events.iter().find(|e| e["event"] == "route").map(|e| {
        (
            e["relayed"].as_bool().unwrap_or(false),
            e["path"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

/// Two homes, each behind its own NAT router, and the internet between them.
fn two_homes(nat: Nat) -> Option<(Net, PathBuf, PathBuf)> {
    let mut net = Net::new()?;
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", nat);
    net.router("r2", "203.0.113.12", "192.168.2", nat);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r2", "192.168.2.2");
    net.services();
    let a = net.daemon("h1");
    let b = net.daemon("h2");
    Some((net, a, b))
}

/// Small: this is about the path, not the rate (through coturn with default socket
/// buffers a few Mbit/s, see docs/PERFORMANCE.md).
fn payload(net: &Net) -> PathBuf {
    random_file(net.dir.path(), "payload.bin", 1024 * 1024, 21)
}

fn received_ok(net: &Net, host: &str, source: &Path) {
    let saved = net.dir.path().join(host).join("dl").join("payload.bin");
    assert_eq!(
        std::fs::read(&saved).unwrap_or_default(),
        std::fs::read(source).unwrap(),
        "{}",
        net.logs()
    );
}

#[test]
fn both_behind_ordinary_nat_connect_directly_through_stun() {
    let Some((net, a, b)) = two_homes(Nat::Ordinary) else {
        return;
    };
    let file = payload(&net);
    let (ok, events) = transfer(&a, &b, &file, &[]);
    assert!(ok, "{events:?}\n{}", net.logs());
    let (relayed, path) = route(&events).expect("a route event");
    assert!(!relayed, "ordinary NAT must not need the relay: {path}");
    assert!(path.contains("srflx") || path.contains("prflx"), "{path}");
    received_ok(&net, "h2", &file);
}

#[test]
fn both_behind_port_randomizing_nat_go_through_the_turn_relay() {
    let Some((net, a, b)) = two_homes(Nat::PortRandomizing) else {
        return;
    };
    let file = payload(&net);
    let (ok, events) = transfer(&a, &b, &file, &[]);
    if std::env::var_os("P2PD_NETNS_LOGS").is_some() {
        println!("{}", net.logs());
    }
    assert!(ok, "{events:?}\n{}", net.logs());
    let (relayed, path) = route(&events).expect("a route event");
    assert!(
        relayed,
        "random ports defeat STUN, so only the relay works: {path}"
    );
    received_ok(&net, "h2", &file);
}

#[test]
fn same_lan_uses_host_candidates() {
    let Some(mut net) = Net::new() else { return };
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", Nat::Ordinary);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r1", "192.168.1.3");
    net.services();
    let a = net.daemon("h1");
    let b = net.daemon("h2");
    let file = payload(&net);
    let (ok, events) = transfer(&a, &b, &file, &[]);
    assert!(ok, "{events:?}\n{}", net.logs());
    let (relayed, path) = route(&events).expect("a route event");
    assert!(!relayed && path == "direct (host ↔ host)", "{path}");
    received_ok(&net, "h2", &file);
}

#[test]
fn no_path_at_all_fails_within_a_minute_and_says_what_to_try() {
    let Some(mut net) = Net::new() else { return };
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", Nat::Ordinary);
    net.router("r2", "203.0.113.12", "192.168.2", Nat::Ordinary);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r2", "192.168.2.2");
    // UDP to the outside is blocked (TCP still reaches the rendezvous), so the relay is out of reach too.
    net.exec("r1", "iptables -A FORWARD -p udp -j DROP");
    net.exec("r2", "iptables -A FORWARD -p udp -j DROP");
    net.services();
    let a = net.daemon("h1");
    let b = net.daemon("h2");
    let file = payload(&net);
    let started = Instant::now();
    let (ok, events) = transfer(&a, &b, &file, &[]);
    let took = started.elapsed();
    assert!(!ok, "{events:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let failed = events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("a failed event");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no network route") && message.contains("TURN"),
        "{message}"
    );
}
