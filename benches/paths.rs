//! Impaired and relayed paths: one file from a home behind a NAT router to another, over
//! network namespaces (harness: `tests/netns/mod.rs`), against a TCP copy of the same
//! file over the same path in the same run (h1 → h2 through a port forward on h2's
//! router). Needs root, ip, iptables, tc, ethtool and coturn.
//!
//! `cargo bench --bench paths` runs every path; `cargo bench --bench paths -- NAME...`
//! only the paths named. P2PD_PATHS_MIB sets the file size (64 by default).
//! TCP is timed twice, with the kernel's default congestion control (BBR here) and with
//! CUBIC. P2PD_PATHS_VARIANTS chooses the p2pd rows, comma-separated (default `bbr`):
//! `upstream`, `rto`, `rack` or `bbr` run both daemons with that `--sctp-recovery` (one
//! association per transfer; the striped figures of before are in docs/PERFORMANCE.md);
//! `bbr-fixed` is `bbr` with the receive window fixed at 2 MiB. The
//! `share-40ms-50mbit` row runs the transfer beside a TCP-CUBIC flow through the same
//! bottleneck and prints each one's rate over the transfer's data phase.

#[path = "../tests/netns/mod.rs"]
mod netns;

use std::time::Duration;

use netns::{Impairment, Nat, random_file, transfer, two_homes};

struct Scenario {
    name: &'static str,
    nat: Nat,
    impairment: Impairment,
}

fn paths() -> Vec<Scenario> {
    let impaired = |loss_percent: f64, rtt_ms: u64| Impairment {
        loss_percent,
        one_way_delay: Duration::from_millis(rtt_ms / 2),
        rate_mbit: Some(50),
    };
    let direct = |name, impairment| Scenario {
        name,
        nat: Nat::Ordinary,
        impairment,
    };
    let relayed = |name, impairment| Scenario {
        name,
        nat: Nat::PortRandomizing,
        impairment,
    };
    vec![
        direct("clean-50mbit", impaired(0.0, 0)),
        direct("40ms-50mbit", impaired(0.0, 40)),
        direct("loss1-40ms-50mbit", impaired(1.0, 40)),
        direct("loss5-40ms-50mbit", impaired(5.0, 40)),
        direct("loss1-200ms-50mbit", impaired(1.0, 200)),
        direct("loss5-200ms-50mbit", impaired(5.0, 200)),
        // No loss and no rate limit: what bounds one association is its window.
        direct(
            "200ms-unlimited",
            Impairment {
                one_way_delay: Duration::from_millis(100),
                ..Impairment::default()
            },
        ),
        // One p2pd transfer and one TCP-CUBIC flow through the same bottleneck at once.
        direct(SHARE, impaired(0.0, 40)),
        relayed("relayed-50mbit", impaired(0.0, 0)),
        relayed("relayed-unlimited", Impairment::default()),
    ]
}

/// The sharing row: p2pd beside a competing TCP-CUBIC flow.
const SHARE: &str = "share-40ms-50mbit";

/// Runs `variant`'s transfer while a TCP-CUBIC flow shares the path; prints each one's rate
/// over the transfer's data phase and p2pd's share.
fn share(
    net: &netns::Net,
    (sender, receiver): (&std::path::Path, &std::path::Path),
    source: &std::path::Path,
    name: &str,
) {
    let flow = net.tcp_flow(("h1", "h2", "203.0.113.12"), "cubic");
    // Let CUBIC fill the path first, as a flow already running would have.
    std::thread::sleep(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let outcome = netns::transfer(sender, receiver, source, &[]);
    let counts = flow.stop();
    assert!(outcome.ok, "{name}: {:?}\n{}", outcome.events, net.logs());
    let bytes = std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
    let (from, _) = outcome.first_progress.expect("progress reports");
    let (begin, end) = (started + from, started + outcome.elapsed);
    let at = |t: std::time::Instant| {
        counts
            .iter()
            .take_while(|(when, _)| *when <= t)
            .last()
            .map_or(0, |(_, total)| *total)
    };
    let tcp = (at(end) - at(begin)) as f64 * 8.0 / (end - begin).as_secs_f64() / 1e6;
    let p2pd = outcome.data_mbit(bytes).unwrap_or(0.0);
    println!(
        "{name:<34} p2pd {p2pd:.1} Mbit/s, TCP-CUBIC {tcp:.1} Mbit/s at the same time: p2pd's share {:.2}",
        p2pd / (p2pd + tcp)
    );
}

fn mbit(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

/// Sends `source` from `a` to `b` (which saves into `downloads`) and checks what
/// arrived; the data phase's and the whole job's Mbit/s, and the route it took.
fn send_and_check(
    net: &netns::Net,
    (a, b, downloads): (&std::path::Path, &std::path::Path, &std::path::Path),
    source: &std::path::Path,
    name: &str,
) -> (f64, f64, String) {
    let outcome = transfer(a, b, source, &[]);
    let received = downloads.join(source.file_name().expect("a name"));
    let verified = outcome.ok && std::fs::read(&received).ok() == std::fs::read(source).ok();
    assert!(verified, "{name}: {:?}\n{}", outcome.events, net.logs());
    let _ = std::fs::remove_file(&received);
    let route = outcome.route().map(|(_, p)| p).unwrap_or_default();
    let bytes = std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
    let whole = mbit(bytes, outcome.elapsed);
    (outcome.data_mbit(bytes).unwrap_or(whole), whole, route)
}

/// The daemons of one p2pd row: flags for both sides.
fn variant_flags(variant: &str) -> Vec<&'static str> {
    match variant {
        "upstream" => vec!["--sctp-recovery", "upstream"],
        "rto" => vec!["--sctp-recovery", "rto"],
        "rack" => vec!["--sctp-recovery", "rack"],
        "bbr" => vec!["--sctp-recovery", "bbr"],
        // The receive window fixed at its starting 2 MiB, as before it could grow.
        "bbr-fixed" => vec![
            "--sctp-recovery",
            "bbr",
            "--sctp-window-max-bytes",
            "2097152",
        ],
        other => panic!("unknown variant {other}: use upstream, rto, rack, bbr or bbr-fixed"),
    }
}

/// Times a TCP copy from h1 to h2 with `congestion` control on the sending socket.
fn tcp_rate(net: &netns::Net, source: &std::path::Path, bytes: u64, congestion: &str) -> f64 {
    let target = net.dir.path().join("tcp.bin");
    let tcp = net.tcp_copy(("h1", "h2", "203.0.113.12"), congestion, source, &target);
    assert_eq!(
        std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0),
        bytes,
        "the TCP copy is short"
    );
    let _ = std::fs::remove_file(&target);
    mbit(bytes, tcp)
}

fn main() {
    // cargo bench passes --bench; the other arguments choose paths.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mib: usize = std::env::var("P2PD_PATHS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let variants: Vec<String> = std::env::var("P2PD_PATHS_VARIANTS")
        .unwrap_or_else(|_| "bbr".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let bytes = (mib * 1024 * 1024) as u64;
    println!("{mib} MiB from h1 to h2; TCP = a socket copy over the same path, same run");
    println!("p2pd = the data phase (first progress report to the verified file); job = the whole");
    println!("job from the send request (rendezvous, ICE, DTLS, hashing included); Mbit/s");
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7}  route",
        "path", "TCP-BBR", "TCP-CUBIC", "p2pd", "÷BBR", "÷CUBIC", "job"
    );
    for path in paths() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == path.name) {
            continue;
        }
        let Some((mut net, _, _)) = two_homes(path.nat, path.impairment) else {
            return;
        };
        net.forward_tcp("r2", "192.168.2.2");
        let source = random_file(net.dir.path(), "payload.bin", bytes as usize, 7);
        if path.name == SHARE {
            for variant in &variants {
                let flags = variant_flags(variant);
                let sender = net.daemon_with("h1", &format!("h1-{variant}"), &flags);
                let receiver = net.daemon_with("h2", &format!("h2-{variant}"), &flags);
                share(
                    &net,
                    (&sender, &receiver),
                    &source,
                    &format!("{} {variant}", path.name),
                );
            }
            continue;
        }
        let bbr = tcp_rate(&net, &source, bytes, "bbr");
        let cubic = tcp_rate(&net, &source, bytes, "cubic");
        for variant in &variants {
            let flags = variant_flags(variant);
            let sender = net.daemon_with("h1", &format!("h1-{variant}"), &flags);
            let receiver_home = format!("h2-{variant}");
            let receiver = net.daemon_with("h2", &receiver_home, &flags);
            let downloads = net.dir.path().join(&receiver_home).join("dl");
            let name = format!("{} {variant}", path.name);
            let (rate, whole, route) =
                send_and_check(&net, (&sender, &receiver, &downloads), &source, &name);
            println!(
                "{:<34} {:>9.1} {:>9.1} {:>8.1} {:>7.2} {:>7.2} {:>7.1}  {route}",
                name,
                bbr,
                cubic,
                rate,
                rate / bbr,
                rate / cubic,
                whole
            );
        }
    }
}
