//! Issue #29: two daemons with default settings (each its own embedded rendezvous) on
//! one LAN send by code; across two NATs, the receiver is told why a code is unknown.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::P2P;
use crate::netns_harness::{Nat, Net, random_file, start_transfer, transfer};

/// Waits until the daemon at `socket` has seen another daemon announced on its LAN (all
/// carry this machine's host name: default settings).
fn sees_another(socket: &Path, net: &Net) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = Command::new(P2P)
            .arg("--socket")
            .arg(socket)
            .args(["nearby", "--json"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&listed.stdout).contains("\"name\"") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nobody seen on the LAN\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn daemons_with_default_settings_meet_on_a_lan_and_across_nats_are_told_why_not() {
    let Some(mut net) = Net::new() else { return };
    net.internet();
    net.router("r1", "203.0.113.11", "192.168.1", Nat::Ordinary);
    net.router("r2", "203.0.113.12", "192.168.2", Nat::Ordinary);
    net.host("h1", "r1", "192.168.1.2");
    net.host("h2", "r1", "192.168.1.3");
    net.host("h3", "r2", "192.168.2.2");
    let a = net.daemon_with_defaults("h1");
    let b = net.daemon_with_defaults("h2");
    let far = net.daemon_with_defaults("h3");
    sees_another(&b, &net);

    let file = random_file(net.dir.path(), "by-code.bin", 2 << 20, 61);
    let outcome = transfer(&a, &b, &file, &[]);
    assert!(outcome.ok, "{:?}\n{}", outcome.events, net.logs());
    assert_eq!(
        std::fs::read(net.downloads("h2").join("by-code.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // Behind another NAT no daemon on its LAN knows the code: the error says why.
    let (mut send, receive) = start_transfer(&a, &far, &file, &[]);
    let out = receive.wait_with_output().unwrap();
    let _ = send.kill();
    let _ = send.wait();
    assert!(!out.status.success());
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains("nor on this LAN") && events.contains("both sides must use one"),
        "{events}"
    );
}
