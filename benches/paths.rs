//! Impaired and relayed paths: one file from a home behind a NAT router to another, over
//! network namespaces (harness: `tests/netns/mod.rs`), against a TCP copy of the same
//! file over the same path in the same run (h1 → h2 through a port forward on h2's
//! router). Needs root, ip, iptables, tc, ethtool and coturn.
//!
//! `cargo bench --bench paths` runs every path; `cargo bench --bench paths -- NAME...`
//! only the paths named. P2PD_PATHS_MIB sets the file size
//! (64 by default); P2PD_PATHS_NO_ONE_LANE skips the one-lane comparison rows.

#[path = "../tests/netns/mod.rs"]
mod netns;

use std::time::Duration;

use netns::{Impairment, Nat, random_file, transfer, two_homes};

struct Scenario {
    name: &'static str,
    nat: Nat,
    impairment: Impairment,
    /// Also send the file from a daemon limited to one peer connection (`--lanes 1`): what
    /// striping over several gains on this path.
    one_lane_too: bool,
}

fn paths() -> Vec<Scenario> {
    let impaired = |loss_percent: f64, rtt_ms: u64| Impairment {
        loss_percent,
        one_way_delay: Duration::from_millis(rtt_ms / 2),
        rate_mbit: Some(50),
    };
    let direct = |name, impairment, one_lane_too| Scenario {
        name,
        nat: Nat::Ordinary,
        impairment,
        one_lane_too,
    };
    let relayed = |name, impairment| Scenario {
        name,
        nat: Nat::PortRandomizing,
        impairment,
        one_lane_too: true,
    };
    vec![
        direct("clean-50mbit", impaired(0.0, 0), false),
        direct("40ms-50mbit", impaired(0.0, 40), true),
        direct("loss1-40ms-50mbit", impaired(1.0, 40), true),
        direct("loss5-40ms-50mbit", impaired(5.0, 40), false),
        direct("loss1-200ms-50mbit", impaired(1.0, 200), false),
        direct("loss5-200ms-50mbit", impaired(5.0, 200), false),
        // No loss and no rate limit: what bounds one association is its 2 MiB window.
        direct(
            "200ms-unlimited",
            Impairment {
                one_way_delay: Duration::from_millis(100),
                ..Impairment::default()
            },
            true,
        ),
        relayed("relayed-50mbit", impaired(0.0, 0)),
        relayed("relayed-unlimited", Impairment::default()),
    ]
}

fn mbit(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

/// Sends `source` from `a` to `b` and checks what arrived; the route it took.
fn send_and_check(
    net: &netns::Net,
    a: &std::path::Path,
    b: &std::path::Path,
    source: &std::path::Path,
    name: &str,
) -> (Duration, String) {
    let outcome = transfer(a, b, source, &[]);
    let received = net
        .downloads("h2")
        .join(source.file_name().expect("a name"));
    let verified = outcome.ok && std::fs::read(&received).ok() == std::fs::read(source).ok();
    assert!(verified, "{name}: {:?}\n{}", outcome.events, net.logs());
    let _ = std::fs::remove_file(&received);
    let route = outcome.route().map(|(_, p)| p).unwrap_or_default();
    (outcome.elapsed, route)
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
        "{:<26} {:>10} {:>10} {:>7}  route",
        "path", "TCP Mbit/s", "p2pd", "ratio"
    );
    for path in paths() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == path.name) {
            continue;
        }
        let Some((mut net, a, b)) = two_homes(path.nat, path.impairment) else {
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
        let tcp_rate = mbit(bytes, tcp);
        let mut runs = vec![(path.name.to_owned(), a)];
        if path.one_lane_too && std::env::var_os("P2PD_PATHS_NO_ONE_LANE").is_none() {
            let one = net.daemon_with("h1", "h1-one-lane", &["--lanes", "1"]);
            runs.push((format!("{} 1 lane", path.name), one));
        }
        for (name, sender) in runs {
            let (elapsed, route) = send_and_check(&net, &sender, &b, &source, &name);
            let p2pd_rate = mbit(bytes, elapsed);
            println!(
                "{:<26} {:>10.1} {:>10.1} {:>7.2}  {route}",
                name,
                tcp_rate,
                p2pd_rate,
                p2pd_rate / tcp_rate
            );
        }
    }
}
