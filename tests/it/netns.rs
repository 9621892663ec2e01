//! Real networks: NAT traversal, the TURN relay and impaired links, with one `p2pd` per
//! home in its own network namespace (harness: `tests/netns/mod.rs`). Skipped, with a
//! line saying so, where namespaces cannot be built (not root, tools missing).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns_harness::{
    Impairment, Nat, Net, random_file, start_transfer, transfer, two_homes,
};

/// Small: these tests are about the path, not the rate (`cargo bench --bench paths` has
/// the rates).
fn payload(net: &Net) -> std::path::PathBuf {
    random_file(net.dir.path(), "payload.bin", 1024 * 1024, 21)
}

fn received_ok(net: &Net, host: &str, source: &Path) {
    let saved = net.downloads(host).join(source.file_name().unwrap());
    assert_eq!(
        std::fs::read(&saved).unwrap_or_default(),
        std::fs::read(source).unwrap(),
        "{}",
        net.logs()
    );
}

/// Sends the small payload from h1's daemon to h2's, checks it arrived intact, and returns
/// the route the transfer reported: (relayed, description).
fn delivered(net: &Net, a: &Path, b: &Path) -> (bool, String) {
    let file = payload(net);
    let outcome = transfer(a, b, &file, &[]);
    assert!(outcome.ok, "{:?}\n{}", outcome.events, net.logs());
    received_ok(net, "h2", &file);
    outcome.route().expect("a route event")
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn both_behind_ordinary_nat_connect_directly_through_stun() {
    let Some((net, a, b)) = two_homes(Nat::Ordinary, Impairment::default()) else {
        return;
    };
    let (relayed, path) = delivered(&net, &a, &b);
    assert!(!relayed, "ordinary NAT must not need the relay: {path}");
    assert!(path.contains("srflx") || path.contains("prflx"), "{path}");
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn both_behind_port_randomizing_nat_go_through_the_turn_relay() {
    let Some((net, a, b)) = two_homes(Nat::PortRandomizing, Impairment::default()) else {
        return;
    };
    let (relayed, path) = delivered(&net, &a, &b);
    assert!(
        relayed,
        "random ports defeat STUN, so only the relay works: {path}"
    );
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn a_relayed_transfer_starts_and_finishes_about_as_promptly_as_a_direct_one() {
    // Issue #29 item 11: through the relay the first byte moved 4.8 s after `p2p send`
    // (1.6 s direct) and the sender said completed 4.9 s after the receiver.
    let mut timings = Vec::new();
    for nat in [Nat::Ordinary, Nat::PortRandomizing] {
        let Some((net, a, b)) = two_homes(nat, Impairment::default()) else {
            return;
        };
        let file = payload(&net);
        let timed = crate::netns_harness::timing::timed_transfer(&a, &b, &file);
        eprintln!(
            "{nat:?}: relayed {}, first byte {:.2?}, receiver completed {:.2?}, sender {:+.2} s after it",
            timed.relayed,
            timed.first_byte,
            timed.receiver_completed,
            timed.sender_lag()
        );
        timings.push(timed);
    }
    let [direct, relayed] = [timings[0], timings[1]];
    assert!(!direct.relayed && relayed.relayed, "{timings:?}");
    for timed in &timings {
        assert!(
            timed.sender_lag() < 1.0,
            "the sender completed late: {timed:?}"
        );
    }
    // Measured here: 1.0 to 2.7 s later (2.8 to 3.4 s while ICE held a working relay
    // back 2 s); the goal, within 1 s, is not reached yet. Loose, for a loaded machine.
    let later = relayed.first_byte.as_secs_f64() - direct.first_byte.as_secs_f64();
    assert!(
        later < 4.0,
        "the relayed path started {later:.2} s later: {timings:?}"
    );
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn same_lan_uses_host_candidates() {
    let Some(mut net) = Net::new() else { return };
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", Nat::Ordinary);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r1", "192.168.1.3");
    net.services();
    let a = net.daemon("h1");
    let b = net.daemon("h2");
    let (relayed, path) = delivered(&net, &a, &b);
    // The far side may be peer-reflexive: its check can beat its trickled host candidate.
    assert!(
        !relayed && (path == "direct (host ↔ host)" || path == "direct (host ↔ prflx)"),
        "{path}"
    );
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn no_path_at_all_fails_within_a_minute_and_says_what_to_try() {
    let Some(mut net) = Net::new() else { return };
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", Nat::Ordinary);
    net.router("r2", "203.0.113.12", "192.168.2", Nat::Ordinary);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r2", "192.168.2.2");
    // UDP to the outside is blocked (TCP still reaches the rendezvous), so the relay is
    // out of reach too.
    net.exec("r1", "iptables -A FORWARD -p udp -j DROP");
    net.exec("r2", "iptables -A FORWARD -p udp -j DROP");
    net.services();
    let a = net.daemon("h1");
    let b = net.daemon("h2");
    let file = payload(&net);
    let started = Instant::now();
    let outcome = transfer(&a, &b, &file, &[]);
    let took = started.elapsed();
    assert!(!outcome.ok, "{:?}", outcome.events);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let failed = outcome
        .events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("a failed event");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no network route") && message.contains("TURN"),
        "{message}"
    );
}

/// The worst path of the benchmark's matrix (5 % loss, 200 ms round trip, 50 Mbit/s)
/// still delivers a verified file; the rates are in `cargo bench --bench paths`.
#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn a_lossy_slow_distant_path_still_delivers() {
    let impairment = Impairment {
        loss_percent: 5.0,
        one_way_delay: Duration::from_millis(100),
        rate_mbit: Some(50),
    };
    let Some((net, a, b)) = two_homes(Nat::Ordinary, impairment) else {
        return;
    };
    // The path really is what it claims: a TCP handshake to the internet takes the round
    // trip (the rendezvous answers at once)...
    let started = Instant::now();
    let connect = net.inside("h1", || {
        std::net::TcpStream::connect((crate::netns_harness::INTERNET, 9009)).map(|_| ())
    });
    connect.join().unwrap().expect("reach the rendezvous");
    let rtt = started.elapsed();
    assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
    let file = random_file(net.dir.path(), "payload.bin", 1024 * 1024, 22);
    let outcome = transfer(&a, &b, &file, &[]);
    assert!(outcome.ok, "{:?}\n{}", outcome.events, net.logs());
    received_ok(&net, "h2", &file);
    // ...and the router dropped packets of this transfer.
    let counters = net.output("r1", "iptables -L FORWARD -v -x -n");
    let dropped: u64 = counters
        .lines()
        .find(|l| l.contains("statistic"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "no packet was lost:\n{counters}");
}

/// A path is found but the DTLS handshake over it never completes (here the router drops
/// every DTLS handshake record until the daemons give up on the first connections): both
/// sides start again with a new peer connection, and the transfer then delivers.
#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn a_handshake_that_stalls_is_tried_again_with_new_connections() {
    let Some((net, a, b)) = two_homes(Nat::Ordinary, Impairment::default()) else {
        return;
    };
    // UDP whose payload starts with 22: a DTLS handshake record (RFC 6347 4.1). STUN
    // starts with 0 or 1, so ICE still finds the path.
    const DTLS_HANDSHAKE: &str = "FORWARD -p udp -m u32 --u32 \"0>>22&0x3C@8>>24=0x16\" -j DROP";
    net.exec("r1", &format!("iptables -I {DTLS_HANDSHAKE}"));
    let file = payload(&net);
    let sending = {
        let (a, b, file) = (a.clone(), b.clone(), file.clone());
        std::thread::spawn(move || transfer(&a, &b, &file, &[]))
    };
    let log = net.dir.path().join("h1").join("p2pd.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("trying again with a new connection")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no second attempt:\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let counters = net.output("r1", "iptables -L FORWARD -v -x -n");
    net.exec("r1", &format!("iptables -D {DTLS_HANDSHAKE}"));
    let dropped: u64 = counters
        .lines()
        .find(|l| l.contains("u32"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "no handshake packet was dropped:\n{counters}");
    let outcome = sending.join().unwrap();
    assert!(outcome.ok, "{:?}\n{}", outcome.events, net.logs());
    received_ok(&net, "h2", &file);
}

/// A laptop that changes address mid-transfer (a new DHCP lease, another network): the
/// old ICE path dies, the job waits to resume, both daemons find each other again
/// through the rendezvous from their new addresses and finish from verified data.
#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn changing_address_mid_transfer_resumes_and_verifies() {
    let impairment = Impairment {
        rate_mbit: Some(20),
        ..Impairment::default()
    };
    let Some((net, a, b)) = two_homes(Nat::Ordinary, impairment) else {
        return;
    };
    let file = random_file(net.dir.path(), "payload.bin", 16 * 1024 * 1024, 23);
    let (send, receive) = start_transfer(&a, &b, &file, &[]);
    let downloads = net.downloads("h2");
    let partial_len = || {
        std::fs::read_dir(&downloads)
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".p2pd-part"))
            .and_then(|e| e.metadata().ok())
            .map(|m| m.len())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_len().unwrap_or(0) < 3 * 1024 * 1024 {
        assert!(Instant::now() < deadline, "no progress\n{}", net.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    net.exec(
        "h1",
        "ip addr flush dev eth0 && ip addr add 192.168.1.9/24 dev eth0 && ip route add default via 192.168.1.1",
    );
    let saved = downloads.join("payload.bin");
    let deadline = Instant::now() + Duration::from_secs(150);
    while !saved.exists() {
        assert!(Instant::now() < deadline, "never resumed\n{}", net.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    received_ok(&net, "h2", &file);
    let log = std::fs::read_to_string(net.dir.path().join("h2").join("p2pd.log")).unwrap();
    assert!(
        log.contains("resuming"),
        "finished without resuming?\n{log}"
    );
    for mut client in [send, receive] {
        let _ = client.kill();
        let _ = client.wait();
    }
}

/// `--force-relay` takes the relay even where a direct path exists, and `--require-direct`
/// refuses a path that only a relay can give, telling both sides why.
#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn path_flags_force_the_relay_or_refuse_it() {
    let Some((net, a, b)) = two_homes(Nat::Ordinary, Impairment::default()) else {
        return;
    };
    let file = payload(&net);
    let outcome = transfer(&a, &b, &file, &["--force-relay"]);
    assert!(outcome.ok, "{:?}\n{}", outcome.events, net.logs());
    let (relayed, path) = outcome.route().expect("a route event");
    assert!(relayed, "--force-relay must relay: {path}");
    received_ok(&net, "h2", &file);
    drop(net);

    let Some((net, a, b)) = two_homes(Nat::PortRandomizing, Impairment::default()) else {
        return;
    };
    let file = payload(&net);
    let outcome = transfer(&a, &b, &file, &["--require-direct"]);
    assert!(!outcome.ok, "{:?}", outcome.events);
    let failed = outcome
        .events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("a failed event");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains("--require-direct"), "{message}");
    assert!(
        std::fs::read_dir(net.downloads("h2"))
            .unwrap()
            .next()
            .is_none(),
        "nothing may be written when the path is refused"
    );
}

/// Two daemons behind their own NAT routers pair through the rendezvous on the internet,
/// then send by name with the real CLI: no code, the device's rule saving it under
/// `From h1/`; after `p2p unpair` the same command is refused in one line.
#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn paired_devices_send_by_name_across_two_nats() {
    use crate::nearby::{p2p, paired_daemons};
    let Some(mut net) = Net::new() else { return };
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", Nat::Ordinary);
    net.router("r2", "203.0.113.12", "192.168.2", Nat::Ordinary);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r2", "192.168.2.2");
    net.services();
    let (a, _b) = paired_daemons(&mut net);
    let file = payload(&net);
    let sent = p2p(
        &a,
        &["send", "--json", "--to", "h2", file.to_str().unwrap()],
    );
    let events = String::from_utf8_lossy(&sent.stdout).into_owned();
    assert!(sent.status.success(), "{events}\n{}", net.logs());
    assert!(events.contains("\"device\":\"h2\""), "{events}");
    assert!(
        events.contains("srflx") || events.contains("prflx"),
        "{events}"
    );
    let saved = net.downloads("h2").join("From h1").join("payload.bin");
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&file).unwrap()
    );

    let unpaired = p2p(&a, &["unpair", "h2"]);
    assert!(unpaired.status.success(), "{unpaired:?}");
    assert_eq!(
        String::from_utf8_lossy(&unpaired.stderr).trim(),
        "Unpaired h2: both devices forgot each other"
    );
    let refused = p2p(&a, &["send", "--to", "h2", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error: no paired device is called h2: p2p devices lists them, p2p pair adds one"
    );
}
