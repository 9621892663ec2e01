//! Impaired and relayed paths: one file from a home behind a NAT router to another, over
//! network namespaces (harness: `tests/netns/mod.rs`), against a TCP copy of the same
//! file over the same path in the same run (h1 → h2 through a port forward on h2's
//! router). Needs root, ip, iptables, tc, ethtool and coturn.
//!
//! `cargo bench --bench paths` runs every path; `cargo bench --bench paths -- NAME...`
//! only the paths named. P2PD_PATHS_MIB sets the file size
//! (64 by default).

#[path = "../tests/netns/mod.rs"]
mod netns;

use std::time::Duration;

use netns::{Impairment, Nat, random_file, transfer, two_homes};

struct Scenario {
    name: &'static str,
    nat: Nat,
    impairment: Impairment,
    /// The file is split into this many parts sent as concurrent transfers, each on its
    /// own peer connection (its own SCTP association and congestion window): what
    /// striping one transfer over several connections would give.
    parallel: usize,
}

fn paths() -> Vec<Scenario> {
    let impaired = |loss_percent: f64, rtt_ms: u64| Impairment {
        loss_percent,
        one_way_delay: Duration::from_millis(rtt_ms / 2),
        rate_mbit: Some(50),
    };
    let direct = |name, impairment, parallel| Scenario {
        name,
        nat: Nat::Ordinary,
        impairment,
        parallel,
    };
    let relayed = |name, impairment| Scenario {
        name,
        nat: Nat::PortRandomizing,
        impairment,
        parallel: 1,
    };
    vec![
        direct("clean-50mbit", impaired(0.0, 0), 1),
        direct("40ms-50mbit", impaired(0.0, 40), 1),
        direct("loss1-40ms-50mbit", impaired(1.0, 40), 1),
        direct("loss1-40ms-50mbit-x4", impaired(1.0, 40), 4),
        direct("loss1-40ms-50mbit-x8", impaired(1.0, 40), 8),
        direct("loss5-40ms-50mbit", impaired(5.0, 40), 1),
        direct("loss1-200ms-50mbit", impaired(1.0, 200), 1),
        direct("loss5-200ms-50mbit", impaired(5.0, 200), 1),
        relayed("relayed-50mbit", impaired(0.0, 0)),
        relayed("relayed-unlimited", Impairment::default()),
    ]
}

/// `source` itself, or `parts` files holding its consecutive slices.
fn split(source: &std::path::Path, parts: usize) -> Vec<std::path::PathBuf> {
    if parts <= 1 {
        return vec![source.to_owned()];
    }
    let data = std::fs::read(source).expect("read source");
    let size = data.len().div_ceil(parts);
    data.chunks(size)
        .enumerate()
        .map(|(i, slice)| {
            let part = source.with_file_name(format!("part{i}.bin"));
            std::fs::write(&part, slice).expect("write part");
            part
        })
        .collect()
}

fn mbit(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
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
    let bytes = (mib * 1024 * 1024) as u64;
    println!("{mib} MiB from h1 to h2; TCP = a socket copy over the same path, same run");
    println!(
        "{:<22} {:>10} {:>10} {:>7}  route",
        "path", "TCP Mbit/s", "p2pd", "ratio"
    );
    for path in paths() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == path.name) {
            continue;
        }
        let Some((net, a, b)) = two_homes(path.nat, path.impairment) else {
            return;
        };
        net.forward_tcp("r2", "192.168.2.2");
        let source = random_file(net.dir.path(), "payload.bin", bytes as usize, 7);
        let tcp_target = net.dir.path().join("tcp.bin");
        let tcp = net.tcp_copy("h1", "h2", "203.0.113.12", &source, &tcp_target);
        assert_eq!(
            std::fs::metadata(&tcp_target).map(|m| m.len()).unwrap_or(0),
            bytes,
            "the TCP copy is short"
        );
        let _ = std::fs::remove_file(&tcp_target);
        let parts = split(&source, path.parallel);
        let started = std::time::Instant::now();
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let running: Vec<_> = parts
                .iter()
                .map(|part| scope.spawn(|| transfer(&a, &b, part, &[])))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("transfer thread"))
                .collect()
        });
        let elapsed = started.elapsed();
        for (part, outcome) in parts.iter().zip(&outcomes) {
            let received = net.downloads("h2").join(part.file_name().expect("a name"));
            let verified = outcome.ok && std::fs::read(&received).ok() == std::fs::read(part).ok();
            assert!(
                verified,
                "{}: {:?}\n{}",
                path.name,
                outcome.events,
                net.logs()
            );
        }
        let route = outcomes[0].route().map(|(_, p)| p).unwrap_or_default();
        let (tcp_rate, p2pd_rate) = (mbit(bytes, tcp), mbit(bytes, elapsed));
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>7.2}  {route}",
            path.name,
            tcp_rate,
            p2pd_rate,
            p2pd_rate / tcp_rate
        );
    }
}
