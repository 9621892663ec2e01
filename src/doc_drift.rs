//! The numbers the documentation states, checked against the constants the code uses, so
//! the two cannot drift apart again: the README's sample config against the defaults a
//! config resolves to, and the limits and timeouts PROTOCOL.md and ARCHITECTURE.md name.

use std::path::Path;
use std::time::Duration;

use crate::config::{DaemonConfig, FileConfig, Overrides};

const README: &str = include_str!("../README.md");
const PROTOCOL: &str = include_str!("../docs/PROTOCOL.md");
const ARCHITECTURE: &str = include_str!("../docs/ARCHITECTURE.md");

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn states(doc: &str, name: &str, phrase: &str) {
    let flat = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(phrase),
        "{name} should say {phrase:?}; fix the text or the constant"
    );
}

fn secs(duration: Duration) -> u64 {
    duration.as_secs()
}

/// Every uncommented `key = value` line of the README's sample config that has a default
/// states that default.
#[test]
fn the_readme_sample_config_states_the_defaults() {
    let file = FileConfig::parse("", Path::new("empty.toml")).unwrap();
    let flags = Overrides {
        download_dir: Some("/d".into()),
        state_dir: Some("/s".into()),
        socket: Some("/s.sock".into()),
        ..Overrides::default()
    };
    let config = DaemonConfig::resolve(flags, file).unwrap();
    let defaults = [
        ("code_ttl_secs", secs(config.code_ttl).to_string()),
        ("resume_window_secs", secs(config.resume_window).to_string()),
        ("device_wait_secs", secs(config.device_wait).to_string()),
        ("udp_buffer_bytes", config.rtc.udp_buffer_bytes.to_string()),
        (
            "sctp_window_bytes",
            config.rtc.sctp_window_bytes.to_string(),
        ),
        (
            "sctp_window_max_bytes",
            config.rtc.sctp_window_max_bytes.to_string(),
        ),
        (
            "sctp_recovery",
            format!("\"{}\"", config.rtc.sctp_recovery.name()),
        ),
        ("max_files", config.limits.max_files.to_string()),
        ("force_relay", "false".to_owned()),
        ("lan_discovery", config.lan_discovery.to_string()),
        ("require_direct", "false".to_owned()),
    ];
    for (key, value) in defaults {
        let line = README
            .lines()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("README's sample config has no `{key} = …` line"));
        let stated = line[key.len() + 3..]
            .split_whitespace()
            .next()
            .unwrap_or("");
        assert_eq!(stated, value, "README: {line}");
    }
    assert_eq!(
        config.limits.max_total_bytes,
        u64::MAX,
        "no limit, as stated"
    );
    assert_eq!(
        config.limits.max_file_bytes,
        u64::MAX,
        "no limit, as stated"
    );
}

#[test]
fn the_protocol_states_the_limits_in_the_code() {
    use crate::ipc::codec::{MAX_FRAME_BYTES, MAX_REQUEST_BYTES};
    let channel = crate::rtc::peer::CHANNEL_LABEL;
    let phrases = [
        format!("length (at most {} MiB;", MAX_FRAME_BYTES / MIB),
        format!(
            "a frame the daemon reads is at most {} MiB",
            MAX_REQUEST_BYTES / MIB
        ),
        format!(
            "within {} s of its first byte (the hello within {} s of connecting)",
            secs(crate::daemon::connection::FRAME_LIMIT),
            secs(crate::daemon::connection::HELLO_LIMIT)
        ),
        format!(
            "chunks of about {} KiB",
            crate::ipc::delta::CHUNK_BYTES / KIB
        ),
        format!("channel labelled `{channel}`"),
        format!(
            "control messages (at most {} KiB)",
            crate::transfer::wire::MAX_CONTROL_BYTES / KIB
        ),
        format!(
            "(`p2p send --text`, at most {} KiB)",
            crate::transfer::wire::MAX_TEXT_BYTES / KIB
        ),
        format!(
            "a message is at most {} KiB",
            crate::rtc::peer::MAX_MESSAGE_BYTES as usize / KIB
        ),
        format!(
            "once {} messages are queued",
            crate::rtc::channel::INBOUND_QUEUE_MESSAGES
        ),
        format!(
            "({} MiB high-water mark)",
            crate::rtc::channel::BUFFERED_HIGH_BYTES as usize / MIB
        ),
        format!(
            "not open {} s later",
            secs(crate::rtc::peer::HANDSHAKE_TIMEOUT)
        ),
        format!(
            "waits for that offer ({} s)",
            secs(crate::rtc::peer::negotiate::OFFERS_AFTER_RETRY)
        ),
        format!(
            "many bytes of JSON, at most {} KiB:",
            crate::lan::signal::MAX_FRAME_BYTES / KIB
        ),
        format!(
            "busy — {} nearby offers already wait for the person",
            crate::daemon::nearby::MAX_WAITING
        ),
        format!(
            "subnets, {} at a time, and closes one that sends no first frame within {} s; the sender gives up {} s after",
            crate::daemon::nearby::MAX_CONNECTIONS,
            secs(crate::daemon::nearby::FIRST_FRAME_LIMIT),
            secs(crate::daemon::nearby::ANSWER_WAIT)
        ),
        format!(
            "When all {} are held, the oldest connection",
            crate::daemon::nearby::MAX_CONNECTIONS
        ),
        format!(
            "of the {} places waiting for the person",
            crate::daemon::nearby::MAX_WAITING
        ),
        format!(
            "within {} s of taking its place (and, once there, reach the receiver's person within {} min)",
            secs(crate::daemon::nearby::CONNECT_LIMIT),
            secs(crate::daemon::nearby::DECISION_LIMIT) / 60
        ),
        format!(
            "one unanswered for {} min is declined",
            secs(crate::daemon::nearby::DECISION_LIMIT) / 60
        ),
        format!(
            "A listener answers at most {} arrivals at a mailbox at once",
            crate::daemon::mailbox::ANSWERS_AT_ONCE
        ),
        format!(
            "{} at a time ({} s each), every {} s",
            crate::daemon::nearby::LAN_ASKS_AT_ONCE,
            secs(crate::daemon::nearby::LAN_ASK_LIMIT),
            secs(crate::daemon::nearby::LAN_LOOK_EVERY)
        ),
        format!(
            "\"nonce\":\"<{} bytes hex>\"",
            crate::devices::mailbox::LAN_NONCE_BYTES
        ),
        format!(
            "\"challenge\":\"<{} bytes hex>\"",
            crate::devices::mailbox::LAN_CHALLENGE_BYTES
        ),
        format!(
            "(the proof within {} s of its challenge)",
            secs(crate::daemon::nearby::LAN_ASK_LIMIT)
        ),
        format!("at most {} are kept", crate::lan::announce::MAX_NEARBY),
        format!(
            "the instance name is a {}-hex-digit id",
            crate::lan::announce::ID_CHARS
        ),
    ];
    for phrase in phrases {
        states(PROTOCOL, "docs/PROTOCOL.md", &phrase);
    }
    states(README, "README.md", &format!("labelled `{channel}`"));
    states(
        README,
        "README.md",
        &format!(
            "per second over the last {} seconds",
            crate::daemon::rate::RATE_WINDOW.as_secs()
        ),
    );
    states(
        include_str!("../docs/JSON.md"),
        "docs/JSON.md",
        &format!(
            "over the last {} s",
            crate::daemon::rate::RATE_WINDOW.as_secs()
        ),
    );
}

#[test]
fn the_architecture_states_the_bounds_in_the_code() {
    let phrases = [
        format!(
            "{} s bound, {} s from ICE connectivity to an open channel",
            secs(crate::rtc::peer::CONNECT_TIMEOUT),
            secs(crate::rtc::peer::HANDSHAKE_TIMEOUT)
        ),
        format!(
            "inbound messages {} (then the SCTP window closes), channel buffer {} MiB high",
            crate::rtc::channel::INBOUND_QUEUE_MESSAGES,
            crate::rtc::channel::BUFFERED_HIGH_BYTES as usize / MIB
        ),
        format!(
            "IPC frames {} MiB ({} MiB from a client",
            crate::ipc::codec::MAX_FRAME_BYTES / MIB,
            crate::ipc::codec::MAX_REQUEST_BYTES / MIB
        ),
    ];
    for phrase in phrases {
        states(ARCHITECTURE, "docs/ARCHITECTURE.md", &phrase);
    }
}

/// Signaling by hand (PROTOCOL.md §4) and the page (§2): the bounds it states.
#[test]
fn the_manual_signaling_bounds_are_the_codes() {
    use crate::rtc::peer::manual::{GATHER_LIMIT, MAX_BLOB_BYTES};
    let gather = secs(GATHER_LIMIT);
    states(PROTOCOL, "PROTOCOL.md", &format!("(at most {gather} s;"));
    assert!(
        crate::rtc::RtcError::Gathering(String::new())
            .to_string()
            .contains(&format!("within {gather} s")),
        "the gathering error names the limit"
    );
    states(
        PROTOCOL,
        "PROTOCOL.md",
        &format!("most {} KiB) and gives three tries", MAX_BLOB_BYTES / KIB),
    );
    let candidates = crate::rtc::peer::candidates::MAX_REMOTE_CANDIDATES;
    states(
        PROTOCOL,
        "PROTOCOL.md",
        &format!(
            "more than {candidates} endpoints (address and port) is refused, and an attempt takes at most {candidates} trickled"
        ),
    );
    let answer = secs(crate::daemon::manual::ANSWER_WAIT) / 60;
    let connect = secs(crate::daemon::manual::CONNECT_WAIT) / 60;
    states(
        PROTOCOL,
        "PROTOCOL.md",
        &format!(
            "The sender's offer waits {answer} minutes for its answer; both sides then wait up to {connect} minutes for the channel."
        ),
    );
    states(
        PROTOCOL,
        "PROTOCOL.md",
        &format!(
            "at most {} KiB (less if the peer's SDP says so)",
            crate::transfer::wire::CHUNK_BYTES / KIB
        ),
    );
}
