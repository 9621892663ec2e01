//! When each side of a transfer reaches each stage, from both sides' `--json` events (issue
//! #29 item 11: relayed paths were slow to start and slow to finish).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

/// Times since `p2p send` started.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// The receiver's first progress event with bytes written.
    pub first_byte: Duration,
    pub receiver_completed: Duration,
    pub sender_completed: Duration,
    pub relayed: bool,
}

impl Timings {
    /// How long after the receiver the sender said `completed` (negative: before).
    pub fn sender_lag(&self) -> f64 {
        self.sender_completed.as_secs_f64() - self.receiver_completed.as_secs_f64()
    }
}

/// Sends `file` from `a` to `b`, reading both sides' events as they come.
pub fn timed_transfer(a: &Path, b: &Path, file: &Path) -> Timings {
    let started = Instant::now();
    let (mut send, mut receive) = super::start_transfer(a, b, file, &[]);
    let sender_out = send.stdout.take().expect("piped stdout");
    let sender = std::thread::spawn(move || {
        for line in BufReader::new(sender_out).lines() {
            let Ok(line) = line else { break };
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["event"] == "completed" {
                return Some(started.elapsed());
            }
            if event["event"] == "failed" {
                panic!("the send failed: {event}");
            }
        }
        None
    });
    let (mut first_byte, mut receiver_completed, mut relayed) = (None, None, false);
    let receiver_out = receive.stdout.take().expect("piped stdout");
    for line in BufReader::new(receiver_out).lines() {
        let Ok(line) = line else { break };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match event["event"].as_str() {
            Some("progress") if first_byte.is_none() && event["bytes_done"].as_u64() > Some(0) => {
                first_byte = Some(started.elapsed());
            }
            Some("route") => relayed = event["relayed"] == true,
            Some("completed") => receiver_completed = Some(started.elapsed()),
            Some("failed") => panic!("the receive failed: {event}"),
            _ => {}
        }
    }
    let _ = receive.wait();
    let sender_completed = sender.join().expect("the sender's reader");
    let _ = send.wait();
    Timings {
        first_byte: first_byte.expect("a progress event with bytes"),
        receiver_completed: receiver_completed.expect("the receiver completed"),
        sender_completed: sender_completed.expect("the sender completed"),
        relayed,
    }
}
