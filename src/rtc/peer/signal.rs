//! The signaling messages of a negotiation, sealed by the session before they reach the
//! rendezvous: offers, answers and trickled candidates, each naming the attempt it belongs
//! to.

use serde::{Deserialize, Serialize};
use webrtc::peer_connection::RTCIceCandidateInit;

use crate::rendezvous::Session;
use crate::rtc::RtcError;

/// How many times a negotiation may build its peer connections: the first try and one
/// fresh retry when the path was found but the handshake over it did not complete.
pub(super) const ATTEMPTS: u8 = 2;

/// `attempt` is 0 when absent, so a message from a peer that never retries reads as the
/// first attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Signal {
    Offer {
        sdp: String,
        #[serde(default)]
        attempt: u8,
    },
    Answer {
        sdp: String,
        #[serde(default)]
        attempt: u8,
    },
    Candidate {
        candidate: RTCIceCandidateInit,
        #[serde(default)]
        attempt: u8,
    },
    /// The answering side will not connect, and says why (in place of an answer).
    Refused { reason: String },
}

impl Signal {
    pub(super) fn attempt(&self) -> u8 {
        match self {
            Signal::Offer { attempt, .. }
            | Signal::Answer { attempt, .. }
            | Signal::Candidate { attempt, .. } => *attempt,
            Signal::Refused { .. } => 0,
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Signal, RtcError> {
        let signal: Signal = serde_json::from_slice(bytes).map_err(|_| RtcError::BadSignal)?;
        if signal.attempt() >= ATTEMPTS {
            return Err(RtcError::BadSignal);
        }
        Ok(signal)
    }

    fn encode(&self) -> Result<Vec<u8>, RtcError> {
        serde_json::to_vec(self).map_err(|_| RtcError::BadSignal)
    }
}

/// Where a received signal stands against the attempt under way.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fit {
    /// For the attempt under way.
    Current,
    /// The offering side started a new attempt: drop ours and follow.
    NewAttempt,
    /// Left over from an attempt already given up: ignored.
    Stale,
}

/// Only the offering side starts an attempt, and only with an offer: anything else ahead of
/// the attempt under way is treated as a leftover too (it cannot be used).
pub(super) fn fit(signal: &Signal, current: u8) -> Fit {
    match signal.attempt().cmp(&current) {
        std::cmp::Ordering::Equal => Fit::Current,
        std::cmp::Ordering::Greater if matches!(signal, Signal::Offer { .. }) => Fit::NewAttempt,
        _ => Fit::Stale,
    }
}

/// Longest refusal reason shown: a sentence.
const REASON_CHARS: usize = 300;

/// Tells the offering side that this side will not connect, and why, in place of an
/// answer; it fails with [`RtcError::Refused`] instead of waiting for a peer gone.
pub async fn refuse(session: &mut Session, reason: &str) -> Result<(), RtcError> {
    let reason: String = reason.chars().take(REASON_CHARS).collect();
    send_signal(session, &Signal::Refused { reason }).await
}

/// A refusal's reason as this side may show it: the peer's words, escaped and cut short.
pub(super) fn refusal(reason: &str) -> RtcError {
    let reason: String = reason.chars().take(REASON_CHARS).collect();
    RtcError::Refused(crate::terminal::escape_controls(&reason))
}

pub(super) async fn send_signal(session: &mut Session, signal: &Signal) -> Result<(), RtcError> {
    session
        .send(&signal.encode()?)
        .await
        .map_err(RtcError::Signaling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_without_an_attempt_is_the_first_attempts() {
        let signal = Signal::decode(br#"{"type":"offer","sdp":"v=0"}"#).unwrap();
        assert_eq!(
            signal,
            Signal::Offer {
                sdp: "v=0".into(),
                attempt: 0
            }
        );
    }

    #[test]
    fn messages_round_trip() {
        let signal = Signal::Answer {
            sdp: "v=0".into(),
            attempt: 1,
        };
        assert_eq!(Signal::decode(&signal.encode().unwrap()).unwrap(), signal);
    }

    #[test]
    fn an_attempt_beyond_the_limit_or_garbage_is_refused() {
        let beyond = format!(r#"{{"type":"offer","sdp":"v=0","attempt":{ATTEMPTS}}}"#);
        assert!(matches!(
            Signal::decode(beyond.as_bytes()),
            Err(RtcError::BadSignal)
        ));
        assert!(matches!(
            Signal::decode(b"{\"type\":\"hello\"}"),
            Err(RtcError::BadSignal)
        ));
        assert!(matches!(
            Signal::decode(br#"{"type":"offer","sdp":"v=0","attempt":300}"#),
            Err(RtcError::BadSignal)
        ));
    }

    #[test]
    fn only_an_offer_starts_a_new_attempt() {
        let offer = |attempt| Signal::Offer {
            sdp: String::new(),
            attempt,
        };
        let answer = |attempt| Signal::Answer {
            sdp: String::new(),
            attempt,
        };
        assert_eq!(fit(&offer(0), 0), Fit::Current);
        assert_eq!(fit(&offer(1), 0), Fit::NewAttempt);
        assert_eq!(fit(&answer(1), 0), Fit::Stale);
        assert_eq!(fit(&offer(0), 1), Fit::Stale);
        assert_eq!(fit(&answer(1), 1), Fit::Current);
    }
}
