//! Copy-and-paste signaling, as pion's data-channel examples do it: each side's whole
//! session description, every candidate in it (no trickle), as base64 of the JSON
//! `{"type":"offer"|"answer","sdp":…}`, carried between the two screens by a person.
//! There is no rendezvous and no second attempt: a person would have to carry both again.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::{
    RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
};

use super::candidates::{TooManyCandidates, check_count};
use super::negotiate::{Attempt, accept_channel};
use super::{Connection, HANDSHAKE_TIMEOUT, RtcSettings};
use crate::rendezvous::Role;
use crate::rtc::RtcError;

/// How long a description waits for its candidates. An unreachable STUN server delays
/// gathering by about 11 s and an unreachable TURN server stops it from ever completing.
pub const GATHER_LIMIT: Duration = Duration::from_secs(15);
/// A pasted description is at most this long (a description with every candidate of a
/// host with many interfaces is a few KiB).
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

/// Which half of the exchange a description is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Answer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Offer => "offer",
            Kind::Answer => "answer",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a pasted line is not the description wanted. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("nothing was pasted: paste the line the other side printed")]
    Empty,
    #[error("what was pasted is longer than any session description (over 64 KiB)")]
    TooLong,
    #[error("what was pasted is not base64: copy the whole line the other side printed")]
    NotBase64,
    #[error(
        "what was pasted is base64 but not a session description (JSON with \"type\" and \"sdp\"): copy the line the other side's p2p (or pion example) printed"
    )]
    NotDescription,
    #[error("this is an {found}, but the other side's {expected} is needed here")]
    WrongKind { expected: Kind, found: Kind },
    #[error(
        "the session description in it is damaged (not SDP with a DTLS fingerprint and ICE credentials): copy the whole line again"
    )]
    NotSdp,
    #[error(transparent)]
    TooManyCandidates(#[from] TooManyCandidates),
}

#[derive(Serialize, Deserialize)]
struct Description {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

/// `base64(JSON {"type", "sdp"})`, the pion examples' format.
pub fn encode(kind: Kind, sdp: &str) -> String {
    let json = serde_json::json!({ "type": kind.name(), "sdp": sdp });
    BASE64.encode(json.to_string())
}

/// The SDP in a pasted description of `expected` kind. Whitespace anywhere (a line
/// wrapped by a terminal or a mail client) is ignored.
pub fn decode(blob: &str, expected: Kind) -> Result<String, BlobError> {
    if blob.len() > MAX_BLOB_BYTES * 2 {
        return Err(BlobError::TooLong);
    }
    let compact: String = blob.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(BlobError::Empty);
    }
    if compact.len() > MAX_BLOB_BYTES {
        return Err(BlobError::TooLong);
    }
    let bytes = BASE64
        .decode(compact.as_bytes())
        .map_err(|_| BlobError::NotBase64)?;
    let description: Description =
        serde_json::from_slice(&bytes).map_err(|_| BlobError::NotDescription)?;
    let found = match description.kind.as_str() {
        "offer" => Kind::Offer,
        "answer" => Kind::Answer,
        _ => return Err(BlobError::NotDescription),
    };
    if found != expected {
        return Err(BlobError::WrongKind { expected, found });
    }
    let sdp = description.sdp;
    let has = |prefix: &str| sdp.lines().any(|line| line.trim().starts_with(prefix));
    if !has("a=fingerprint:") || !has("a=ice-ufrag:") || !has("a=ice-pwd:") {
        return Err(BlobError::NotSdp);
    }
    RTCSessionDescription::offer(sdp.clone()).map_err(|_| BlobError::NotSdp)?;
    check_count(&sdp)?;
    Ok(sdp)
}

/// A peer connection whose description has been handed out, waiting for the other half
/// (the offering side) or for the other side to connect (both).
pub struct Pending {
    attempt: Attempt,
}

/// The offering side: a peer connection with its channel, and the offer to print.
pub async fn offer(settings: &RtcSettings) -> Result<(Pending, String), RtcError> {
    let mut attempt = Attempt::new(Role::Sender, settings, 0);
    let described = async {
        attempt.offer().await?;
        described(&mut attempt, settings, Kind::Offer).await
    }
    .await;
    pending(attempt, described).await
}

/// The answering side: a peer connection for the pasted offer's SDP, and the answer to
/// print.
pub async fn answer(
    settings: &RtcSettings,
    offer_sdp: &str,
) -> Result<(Pending, String), RtcError> {
    let mut attempt = Attempt::new(Role::Receiver, settings, 0);
    let described = async {
        let offer_sdp = attempt.remote_sdp(offer_sdp)?;
        let (pc, channels) = attempt.build().await?;
        attempt.opening = Some(accept_channel(channels));
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(|_| RtcError::BadSignal)?;
        pc.set_remote_description(offer)
            .await
            .map_err(|_| RtcError::BadSignal)?;
        let answer = pc.create_answer(None).await.map_err(RtcError::Setup)?;
        pc.set_local_description(answer)
            .await
            .map_err(RtcError::Setup)?;
        described(&mut attempt, settings, Kind::Answer).await
    }
    .await;
    pending(attempt, described).await
}

/// The attempt, pending, with its description; or closed, if describing it failed.
async fn pending(
    mut attempt: Attempt,
    described: Result<String, RtcError>,
) -> Result<(Pending, String), RtcError> {
    match described {
        Ok(blob) => Ok((Pending { attempt }, blob)),
        Err(error) => {
            attempt.close().await;
            Err(error)
        }
    }
}

/// Waits (bounded) for every local candidate, then encodes the local description, which
/// carries them all.
async fn described(
    attempt: &mut Attempt,
    settings: &RtcSettings,
    kind: Kind,
) -> Result<String, RtcError> {
    let complete = tokio::time::timeout(
        GATHER_LIMIT,
        attempt
            .gathering
            .wait_for(|s| *s == RTCIceGatheringState::Complete),
    )
    .await
    .is_ok_and(|waited| waited.is_ok());
    if !complete {
        let servers: Vec<&str> = settings
            .ice_servers
            .iter()
            .flat_map(|s| s.urls.iter().map(String::as_str))
            .collect();
        return Err(RtcError::Gathering(if servers.is_empty() {
            "none configured".into()
        } else {
            servers.join(", ")
        }));
    }
    let pc = attempt.pc.clone().ok_or(RtcError::ChannelClosed)?;
    let local = pc
        .local_description()
        .await
        .ok_or(RtcError::ChannelClosed)?;
    Ok(encode(kind, &local.sdp))
}

impl Pending {
    /// The offering side takes the pasted answer's SDP.
    pub async fn apply_answer(&mut self, sdp: &str) -> Result<(), RtcError> {
        let (Role::Sender, Some(pc)) = (self.attempt.role, &self.attempt.pc) else {
            return Err(RtcError::BadSignal);
        };
        let sdp = self.attempt.remote_sdp(sdp)?;
        let answer = RTCSessionDescription::answer(sdp).map_err(|_| RtcError::BadSignal)?;
        pc.set_remote_description(answer)
            .await
            .map_err(|_| RtcError::BadSignal)
    }

    /// Waits up to `limit` for the channel to open; once ICE has a path, the handshake
    /// over it has [`HANDSHAKE_TIMEOUT`].
    pub async fn connected(
        mut self,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<Connection, RtcError> {
        let opened = self.wait(limit, cancel).await;
        self.attempt.finish(opened).await
    }

    async fn wait(
        &mut self,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<crate::rtc::channel::DataLink, RtcError> {
        let give_up = Instant::now() + limit;
        let mut handshake: Option<Instant> = None;
        let Some(opening) = self.attempt.opening.as_mut() else {
            return Err(RtcError::ChannelClosed);
        };
        loop {
            let handshake_expired = async {
                match handshake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(RtcError::Cancelled),
                _ = tokio::time::sleep_until(give_up) => return Err(RtcError::NoRoute),
                _ = handshake_expired => return Err(RtcError::HandshakeStalled),
                link = &mut *opening => return link.map_err(|_| RtcError::ChannelClosed),
                changed = self.attempt.ice_state.changed() => {
                    let ice = *self.attempt.ice_state.borrow();
                    if changed.is_ok()
                        && handshake.is_none()
                        && matches!(ice, RTCIceConnectionState::Connected | RTCIceConnectionState::Completed)
                    {
                        handshake = Some(Instant::now() + HANDSHAKE_TIMEOUT);
                    }
                }
                changed = self.attempt.state.changed() => {
                    if changed.is_err() || *self.attempt.state.borrow() == RTCPeerConnectionState::Failed {
                        return Err(if handshake.is_some() { RtcError::Handshake } else { RtcError::NoRoute });
                    }
                }
            }
        }
    }

    /// Gives the peer connection up.
    pub async fn close(mut self) {
        self.attempt.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::candidates::MAX_REMOTE_CANDIDATES;
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AB:CD\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";

    #[test]
    fn a_description_round_trips_in_the_pion_examples_format() {
        let blob = encode(Kind::Offer, SDP);
        // What pion's examples print: standard base64 of {"type","sdp"}.
        let json: serde_json::Value =
            serde_json::from_slice(&BASE64.decode(&blob).unwrap()).unwrap();
        assert_eq!(json["type"], "offer");
        assert_eq!(json["sdp"], SDP);
        assert_eq!(decode(&blob, Kind::Offer).unwrap(), SDP);
        // Wrapped over lines by a terminal: still the same.
        let wrapped: String = blob
            .as_bytes()
            .chunks(60)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(decode(&wrapped, Kind::Offer).unwrap(), SDP);
    }

    #[test]
    fn pasted_garbage_is_named_for_what_it_is() {
        assert_eq!(decode("  \n", Kind::Offer), Err(BlobError::Empty));
        assert_eq!(
            decode("not base64!", Kind::Offer),
            Err(BlobError::NotBase64)
        );
        assert_eq!(
            decode(&BASE64.encode("{\"hello\":1}"), Kind::Offer),
            Err(BlobError::NotDescription)
        );
        assert_eq!(
            decode(&BASE64.encode([0xff, 0xfe, 0x00]), Kind::Offer),
            Err(BlobError::NotDescription)
        );
        assert_eq!(
            decode(&encode(Kind::Answer, SDP), Kind::Offer),
            Err(BlobError::WrongKind {
                expected: Kind::Offer,
                found: Kind::Answer
            })
        );
        assert_eq!(
            decode(&encode(Kind::Offer, "v=0\r\n"), Kind::Offer),
            Err(BlobError::NotSdp)
        );
        let truncated = encode(Kind::Offer, SDP);
        assert!(decode(&truncated[..truncated.len() / 2], Kind::Offer).is_err());
        assert_eq!(
            decode(&"A".repeat(MAX_BLOB_BYTES + 4), Kind::Offer),
            Err(BlobError::TooLong)
        );
    }

    #[test]
    fn a_paste_listing_more_candidates_than_a_device_has_is_refused() {
        let listing = |n: u16| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "a=candidate:{i} 1 udp 1 127.0.0.1 {} typ host\r\n",
                        40000 + i
                    )
                })
                .collect()
        };
        let most = format!("{SDP}{}", listing(MAX_REMOTE_CANDIDATES as u16));
        assert!(decode(&encode(Kind::Offer, &most), Kind::Offer).is_ok());
        let hostile = format!("{SDP}{}", listing(700));
        assert_eq!(
            decode(&encode(Kind::Offer, &hostile), Kind::Offer),
            Err(BlobError::TooManyCandidates(TooManyCandidates(700)))
        );
    }

    #[test]
    fn the_messages_say_what_to_do_in_one_line() {
        for error in [
            BlobError::Empty,
            BlobError::TooLong,
            BlobError::NotBase64,
            BlobError::NotDescription,
            BlobError::WrongKind {
                expected: Kind::Answer,
                found: Kind::Offer,
            },
            BlobError::NotSdp,
            BlobError::TooManyCandidates(TooManyCandidates(700)),
        ] {
            let text = error.to_string();
            assert!(!text.contains('\n'), "{text}");
        }
        assert_eq!(
            BlobError::WrongKind {
                expected: Kind::Answer,
                found: Kind::Offer
            }
            .to_string(),
            "this is an offer, but the other side's answer is needed here"
        );
    }
}
