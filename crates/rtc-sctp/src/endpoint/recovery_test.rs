//! Loss recovery and congestion control, end to end through the simulated link of
//! `sim_test`: each rule is shown by the packets it saves or sends, beside upstream's
//! behaviour on the same path.

use super::sim_test::{
    DropRule, Extras, Link, Outcome, clean, drop_data, drop_with_retransmissions, random_loss,
    transfer, transfer_with,
};
use crate::{RecoveryConfig, TransportConfig};
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn upstream() -> RecoveryConfig {
    RecoveryConfig::default()
}

fn rack() -> RecoveryConfig {
    RecoveryConfig {
        rto_min: ms(200),
        rack: true,
        tail_loss_probe: true,
        ..RecoveryConfig::default()
    }
}

/// `bytes` over a 40 ms, 50 Mbit/s path whose forward direction drops by `drop`.
fn run(recovery: RecoveryConfig, bytes: usize, drop: DropRule) -> Outcome {
    run_on(recovery, bytes, Link::new(ms(20), Some(50), drop))
}

fn run_on(recovery: RecoveryConfig, bytes: usize, forward: Link) -> Outcome {
    run_both(recovery, bytes, forward, Link::new(ms(20), None, clean()))
}

fn run_both(recovery: RecoveryConfig, bytes: usize, forward: Link, reverse: Link) -> Outcome {
    let config = TransportConfig::default()
        .with_max_receive_buffer_size(4 * MIB as u32)
        .with_recovery(recovery);
    transfer(
        config,
        forward,
        reverse,
        bytes,
        64 * 1024,
        MIB,
        None,
        Duration::from_secs(120),
    )
}

#[test]
fn a_clean_path_needs_no_retransmission_either_way() {
    for recovery in [upstream(), rack()] {
        let out = run_on(recovery, MIB, Link::new(ms(20), None, clean()));
        assert_eq!(
            (out.t3_timeouts, out.fast_retransmissions),
            (0, 0),
            "{out:?}"
        );
    }
}

#[test]
fn one_lost_packet_is_repaired_without_the_timer() {
    for recovery in [upstream(), rack()] {
        let out = run(recovery, MIB, drop_data(&[100]));
        assert_eq!(out.t3_timeouts, 0, "{recovery:?}: {out:?}");
        assert_eq!(out.fast_retransmissions, 1, "{recovery:?}: {out:?}");
    }
}

#[test]
fn a_lost_retransmission_is_repaired_again_without_the_timer() {
    // Upstream fast-retransmits a chunk once; the second loss waits for T3-rtx.
    let old = run(upstream(), MIB, drop_with_retransmissions(100, 1));
    assert!(old.t3_timeouts >= 1, "{old:?}");
    let new = run(rack(), MIB, drop_with_retransmissions(100, 2));
    assert_eq!(new.t3_timeouts, 0, "{new:?}");
    assert!(new.fast_retransmissions >= 3, "{new:?}");
    assert!(new.elapsed < old.elapsed, "{new:?} vs {old:?}");
}

#[test]
fn a_lost_tail_is_found_by_the_probe_not_the_timer() {
    // 64 KiB is one window: its last DATA packet has no successor to reveal its loss.
    let bytes: usize = 64 * 1024;
    // 1,160 bytes of DATA per packet at the default MTU.
    let last = bytes.div_ceil(1160) - 1;
    let drop_last = move || -> DropRule { Box::new(move |n, _, before| n == last && before == 0) };
    let old = run(upstream(), bytes, drop_last());
    assert!(old.t3_timeouts >= 1, "{old:?}");
    let new = run(rack(), bytes, drop_last());
    assert_eq!(new.t3_timeouts, 0, "{new:?}");
    assert!(new.elapsed < ms(400), "{new:?}");
    assert!(new.elapsed + ms(500) < old.elapsed, "{new:?} vs {old:?}");
}

#[test]
fn reordering_within_the_window_is_not_taken_for_loss() {
    // Packet 200 arrives 3 ms late (the RACK window on a 40 ms path is 10 ms).
    let forward = Link::new(ms(20), None, clean()).reordering(200, ms(3));
    let out = run_on(rack(), 2 * MIB, forward);
    assert_eq!(
        (out.t3_timeouts, out.fast_retransmissions),
        (0, 0),
        "{out:?}"
    );
}

#[test]
fn random_loss_is_repaired_without_timeouts() {
    let old = run(upstream(), 4 * MIB, random_loss(1.0, 7));
    let new = run(rack(), 4 * MIB, random_loss(1.0, 7));
    assert!(new.t3_timeouts <= 1, "{new:?}");
    assert!(new.elapsed < old.elapsed, "{new:?} vs {old:?}");
    println!("1% loss, 4 MiB: upstream {old:?}\nrack {new:?}");
}

#[test]
fn a_window_reopened_by_the_application_is_announced_at_once() {
    // A 128 KiB window, a reader that drains it every 30 ms, and no other traffic that
    // would carry a SACK: upstream's sender learns of the room late.
    let run_with = |window_update_percent| {
        let config = TransportConfig::default()
            .with_max_receive_buffer_size(128 * 1024)
            .with_recovery(RecoveryConfig {
                window_update_percent,
                ..rack()
            });
        transfer(
            config,
            Link::new(ms(5), None, clean()),
            Link::new(ms(5), None, clean()),
            4 * MIB,
            16 * 1024,
            MIB,
            Some(ms(30)),
            Duration::from_secs(120),
        )
    };
    let old = run_with(0);
    let new = run_with(25);
    assert!(
        new.receiver_peak_unread <= 128 * 1024 + 16 * 1024,
        "{new:?}"
    );
    assert!(new.elapsed * 3 < old.elapsed * 2, "{new:?} vs {old:?}");
    println!("slow reader: without {old:?}\nwith {new:?}");
}

fn bbr() -> RecoveryConfig {
    RecoveryConfig {
        congestion_control: crate::CongestionControl::Bbr,
        window_update_percent: 25,
        ..rack()
    }
}

fn mbit(bytes: usize, out: &Outcome) -> f64 {
    bytes as f64 * 8.0 / out.elapsed.as_secs_f64() / 1e6
}

#[test]
fn below_the_configured_rtt_bbr_leaves_the_window_to_reno() {
    // A 1 ms path: BBR measures but neither paces nor sets the window; at 40 ms it does.
    let on = |one_way| {
        let forward = Link::new(one_way, Some(50), drop_data(&[300]));
        run_both(bbr(), 4 * MIB, forward, Link::new(one_way, None, clean()))
    };
    let lan = on(Duration::from_micros(500));
    assert!(!lan.bbr_in_charge, "{lan:?}");
    let wan = on(ms(20));
    assert!(wan.bbr_in_charge, "{wan:?}");
}

#[test]
fn bbr_keeps_a_lossy_path_full_where_reno_cannot() {
    // 1 % random loss, 40 ms, 50 Mbit/s: Reno's window follows the loss (about
    // 1.22 · MSS / (RTT · √p) ≈ 3 Mbit/s); BBR's follows the measured bandwidth.
    let bytes = 16 * MIB;
    let reno = run(rack(), bytes, random_loss(1.0, 11));
    let model = run(bbr(), bytes, random_loss(1.0, 11));
    println!(
        "1% loss: reno {:.1} Mbit/s {reno:?}\nbbr {:.1} Mbit/s {model:?}",
        mbit(bytes, &reno),
        mbit(bytes, &model)
    );
    assert!(mbit(bytes, &model) > 30.0, "{model:?}");
    assert!(
        mbit(bytes, &model) > 3.0 * mbit(bytes, &reno),
        "{model:?} vs {reno:?}"
    );
    assert_eq!(model.t3_timeouts, 0, "{model:?}");
}

#[test]
fn bbr_fills_a_clean_path_and_overflows_the_queue_only_in_startup() {
    // Startup doubles the rate each round until the bandwidth stops growing, which
    // overshoots a one-BDP queue (BBR v1 does so too); after that, pacing at the measured
    // rate drops nothing: four times the data, no more drops.
    let short = run(bbr(), 16 * MIB, clean());
    let long = run(bbr(), 64 * MIB, clean());
    println!("clean: 16 MiB {short:?}\n64 MiB {long:?}");
    assert!(mbit(64 * MIB, &long) > 45.0, "{long:?}");
    assert_eq!(long.t3_timeouts, 0, "{long:?}");
    assert_eq!(long.queue_drops, short.queue_drops, "{long:?} vs {short:?}");
}

/// A 200 ms path with 200 Mbit/s to spare and a 256 KiB starting window, the receiver
/// reading as fast as data comes and reporting every 100 ms (so it has a round trip).
fn long_fat(
    receive_window_max: u32,
    read_every: Option<Duration>,
    read_cap: Option<usize>,
) -> Outcome {
    let config = TransportConfig::default()
        .with_max_receive_buffer_size(256 * 1024)
        .with_recovery(RecoveryConfig {
            receive_window_max,
            ..bbr()
        });
    transfer_with(
        config,
        Link::new(ms(100), Some(200), clean()),
        Link::new(ms(100), None, clean()),
        32 * MIB,
        64 * 1024,
        16 * MIB,
        read_every,
        Duration::from_secs(600),
        Extras {
            talk_every: Some(ms(100)),
            read_cap,
        },
    )
}

#[test]
fn the_receive_window_grows_with_the_path_up_to_its_cap() {
    // Fixed, 256 KiB per 200 ms is about 10 Mbit/s whatever the path.
    let fixed = long_fat(0, None, None);
    let tuned = long_fat(16 * MIB as u32, None, None);
    println!(
        "200 ms: fixed {:.1} Mbit/s {fixed:?}\ntuned {:.1} Mbit/s {tuned:?}",
        mbit(32 * MIB, &fixed),
        mbit(32 * MIB, &tuned)
    );
    assert!(mbit(32 * MIB, &fixed) < 12.0, "{fixed:?}");
    assert_eq!(fixed.receiver_window, 256 * 1024, "{fixed:?}");
    assert!(
        mbit(32 * MIB, &tuned) > 4.0 * mbit(32 * MIB, &fixed),
        "{tuned:?} vs {fixed:?}"
    );
    assert!(tuned.receiver_window <= 16 * MIB as u32, "{tuned:?}");
    assert!(
        tuned.receiver_peak_unread <= tuned.receiver_window,
        "{tuned:?}"
    );
}

#[test]
fn a_slow_reader_gets_no_more_window_than_it_uses() {
    // 32 KiB every 100 ms (2.6 Mbit/s), with a cap of 16 MiB: the window follows what the
    // reader takes per round trip (which its delayed SACKs make look longer than 200 ms),
    // not the cap, and so does what the receiver holds.
    let slow = long_fat(
        16 * MIB as u32,
        Some(Duration::from_millis(100)),
        Some(32 * 1024),
    );
    assert!(slow.receiver_window <= 512 * 1024, "{slow:?}");
    assert!(slow.receiver_peak_unread <= 512 * 1024, "{slow:?}");
}
