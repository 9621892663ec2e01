//! A transfer's WebRTC connection: settings, the [`Connection`] a transfer runs over (its
//! lanes, their proofs and agreement, loss watching), and the limits the peers agree on.
//! Building and negotiating peer connections is in `negotiate.rs`, reading the selected
//! path and certificates from the stack's statistics in `route.rs`.

mod build;
mod negotiate;
mod route;
mod signal;

use negotiate::EXTRA_LANES_GRACE;
pub use negotiate::{connect_answerer, connect_offerer};
pub use route::Route;
use route::{certificates, selected_pair};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use super::channel::DataLink;
use crate::rendezvous::Role;
use crate::rendezvous::crypto::{channel_proof, verify_channel_proof};
use crate::transfer::link::{Incoming, Link};
use crate::transfer::stripe::Striped;
use crate::transfer::{self, TransferError};

/// The data channel's label names the protocol version; a peer with another is refused.
pub const CHANNEL_LABEL: &str = "p2pd/2";
/// Largest message either side may send. File chunks are 64 KiB; the ceiling leaves room.
pub const MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// SCTP receive window of each association by default. Larger than the 1 MiB default so a
/// fast short path is not window-bound (2 MiB / 5 ms ≈ 3.4 Gbit/s); a longer path stripes
/// over all lanes and so gets their windows together (16 × 2 MiB / 200 ms ≈ 1.3 Gbit/s).
pub const SCTP_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Hard cap on one channel's unacknowledged send bytes, above the high-water mark.
const SEND_BUFFER_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// From the first signaling message to an open channel. Past it there is no route.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// From ICE connectivity to an open channel: DTLS, SCTP and the channel open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ICE may still take to connect after the peer left the rendezvous.
const PEER_LEFT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub credential: String,
}

#[derive(Debug, Clone)]
pub struct RtcSettings {
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to bind; `0.0.0.0:0` means every non-loopback interface.
    pub bind: Vec<String>,
    /// Gather and use relay candidates only (`--force-relay`).
    pub relay_only: bool,
    /// Send and receive buffer asked for on each UDP socket; 0 leaves the kernel default.
    pub udp_buffer_bytes: usize,
    /// Peer connections to negotiate per transfer when offering (see [`Striped`]); 1 for
    /// a single association.
    pub lanes: usize,
    /// Each association's SCTP receive window.
    pub sctp_window_bytes: u32,
    /// Loss recovery and congestion control of every association (process-wide).
    pub sctp_recovery: super::sctp::SctpRecovery,
    /// Stripe over the lanes when ICE's round trip is at least this (or the path is
    /// relayed); zero stripes always.
    pub stripe_from_rtt: Duration,
}

impl RtcSettings {
    /// Whether any configured ICE server is a TURN relay.
    pub fn has_relay(&self) -> bool {
        self.ice_servers
            .iter()
            .flat_map(|s| &s.urls)
            .any(|url| url.starts_with("turn:") || url.starts_with("turns:"))
    }
}

/// The largest message the SDP's author accepts (RFC 8841): its `a=max-message-size`, 64 KiB
/// when absent, no limit when 0.
pub fn max_message_size(sdp: &str) -> usize {
    const RFC_8841_DEFAULT: usize = 64 * 1024;
    sdp.lines()
        .find_map(|line| line.trim().strip_prefix("a=max-message-size:"))
        .map(|value| match value.trim().parse::<u64>() {
            Ok(0) => usize::MAX,
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(_) => RFC_8841_DEFAULT,
        })
        .unwrap_or(RFC_8841_DEFAULT)
}

/// One peer connection of a [`Connection`]: its number in the negotiation and its state.
struct LanePc {
    id: u8,
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

/// A connected transfer link: one or more peer connections (lanes), each carrying one data
/// channel, striped into one ordered link. Lane 0 is the one signaled first; its path is
/// the route reported.
pub struct Connection {
    /// Lane 0's peer connection.
    pub pc: Arc<dyn PeerConnection>,
    pub link: Striped<DataLink>,
    /// Parallel to `link.lanes()`.
    lanes: Vec<LanePc>,
    stripe_from_rtt: Duration,
    /// Whether the sender spreads its messages over all lanes.
    striped: bool,
}

impl Drop for Connection {
    /// A connection dropped without `close` (its job was interrupted) still ends: otherwise
    /// the stack keeps answering the peer's checks and the peer never learns we left.
    fn drop(&mut self) {
        let pcs: Vec<_> = self.lanes.iter().map(|lane| lane.pc.clone()).collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for pc in pcs {
                    let _ = pc.close().await;
                }
            });
        }
    }
}

/// How long a connection may stay "disconnected" (no ICE traffic) before we treat the peer
/// as gone; ICE itself only declares failure much later.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);

impl Connection {
    /// Resolves once the connection is lost: failed, closed, or silent for a while. The data
    /// channel alone may never notice a peer that vanished.
    pub async fn lost(&self) {
        let watches = self
            .lanes
            .iter()
            .map(|lane| Box::pin(lost(lane.state.clone())));
        futures_util::future::select_all(watches).await;
    }

    /// Which path lane 0's selected ICE candidate pair takes. `None` before a pair is
    /// selected.
    pub async fn route(&self) -> Option<Route> {
        selected_pair(&self.pc).await.map(|pair| pair.route)
    }

    /// The second lock on the channel: both sides prove the PAKE key over the DTLS
    /// certificates they actually see, whatever the library checked, on every lane. Lane
    /// 0's proof must be the first exchange; then the two sides agree which other lanes
    /// both have open, prove each of those, agree again on the ones proven in time, and
    /// drop the rest. Finally, on a path where one SCTP association cannot fill the pipe,
    /// sending is spread over every lane.
    pub async fn authenticate(
        &mut self,
        binding_key: &[u8; 32],
        role: Role,
    ) -> Result<(), TransferError> {
        prove(&self.lanes[0].pc, &self.link.lanes()[0], binding_key, role).await?;
        let ours = LaneList {
            lanes: self.lanes[1..].iter().map(|lane| lane.id).collect(),
            stripe: role == Role::Sender && self.is_far().await,
        };
        let theirs = exchange_lane_lists(&self.link.lanes()[0], &ours).await?;
        self.keep_lanes(&theirs.lanes).await;
        // A wrong proof is an attack and ends everything; a lane whose proof is still on
        // its way (a lossy path's first messages can wait out SCTP's timers) only drops out.
        let proofs =
            self.lanes[1..]
                .iter()
                .zip(&self.link.lanes()[1..])
                .map(|(lane, link)| async move {
                    let proof = prove(&lane.pc, link, binding_key, role);
                    match tokio::time::timeout(EXTRA_LANES_GRACE, proof).await {
                        Ok(Ok(())) => Ok(Some(lane.id)),
                        Ok(Err(TransferError::PeerGone)) | Err(_) => Ok(None),
                        Ok(Err(error)) => Err(error),
                    }
                });
        let mut proven = Vec::new();
        for proof in futures_util::future::join_all(proofs).await {
            proven.extend(proof?);
        }
        let theirs_proven = exchange_lane_lists(
            &self.link.lanes()[0],
            &LaneList {
                lanes: proven.clone(),
                stripe: ours.stripe,
            },
        )
        .await?;
        proven.retain(|id| theirs_proven.lanes.contains(id));
        self.keep_lanes(&proven).await;
        // The sending side decides, so both report the same.
        let stripe = match role {
            Role::Sender => ours.stripe,
            Role::Receiver => theirs.stripe,
        };
        // Only the side that streams the files spreads them; the receiver's few control
        // messages stay on lane 0, so the sender's merge never waits and always reads the
        // credit frames there.
        self.striped = stripe;
        if stripe {
            self.link
                .set_window(crate::transfer::stripe::STRIPED_CREDIT_WINDOW_MESSAGES);
        }
        if stripe && role == Role::Sender {
            self.link.set_active(self.lanes.len());
        }
        tracing::info!(
            lanes = self.lanes.len(),
            striped = stripe,
            "connection ready"
        );
        Ok(())
    }

    /// Keeps lane 0 and the lanes named in `ids`, closing the others; only before anything
    /// was striped.
    async fn keep_lanes(&mut self, ids: &[u8]) {
        let keep: Vec<bool> = self
            .lanes
            .iter()
            .map(|lane| lane.id == 0 || ids.contains(&lane.id))
            .collect();
        let mut dropped = Vec::new();
        let mut index = 0;
        self.lanes.retain(|lane| {
            index += 1;
            if !keep[index - 1] {
                dropped.push(lane.pc.clone());
            }
            keep[index - 1]
        });
        self.link.retain(&keep);
        for pc in dropped {
            let _ = pc.close().await;
        }
    }

    /// One association is enough where the round trip is short (loss costs it little and
    /// extra associations cost CPU); on a longer or relayed path, stripe over all lanes.
    async fn is_far(&self) -> bool {
        match selected_pair(&self.pc).await {
            Some(pair) => pair.route.relayed || pair.rtt >= self.stripe_from_rtt,
            None => false,
        }
    }

    /// How many lanes carry the sender's data.
    pub fn active_lanes(&self) -> usize {
        if self.striped { self.lanes.len() } else { 1 }
    }

    /// The SHA-256 fingerprints of the DTLS certificates lane 0 actually used:
    /// (ours, the peer's). `None` if DTLS has not completed.
    pub async fn certificates(&self) -> Option<(String, String)> {
        certificates(&self.pc).await
    }

    /// Ends the connection. Call only after the application-level goodbye: closing the
    /// peer connection aborts SCTP and drops anything still in flight.
    pub async fn close(self) {
        for lane in self.link.lanes() {
            lane.close().await;
        }
        for lane in &self.lanes {
            let _ = lane.pc.close().await;
        }
        // Drop closes again, which is harmless.
    }
}

/// Round trips from which a transfer stripes over several associations. Below it (a LAN,
/// loopback) one association at 1 % loss still moves over 100 Mbit/s.
pub const STRIPE_FROM_RTT: Duration = Duration::from_millis(5);

/// Proves the PAKE key over one lane's certificates; the proof is the lane's first message.
async fn prove(
    pc: &Arc<dyn PeerConnection>,
    link: &DataLink,
    binding_key: &[u8; 32],
    role: Role,
) -> Result<(), TransferError> {
    let Some((ours, theirs)) = certificates(pc).await else {
        return Err(TransferError::Unauthenticated);
    };
    let proof = channel_proof(binding_key, role, &ours, &theirs);
    transfer::exchange_proofs(link, &proof, |peer| {
        verify_channel_proof(binding_key, role, &ours, &theirs, peer)
    })
    .await
}

/// The lane list, the second message on lane 0 (after the proofs): which extra lanes this
/// side has open (both sides keep the lanes in both lists) and, from the sender, whether
/// it will stripe over them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneList {
    lanes: Vec<u8>,
    #[serde(default)]
    stripe: bool,
}

async fn exchange_lane_lists(link: &DataLink, ours: &LaneList) -> Result<LaneList, TransferError> {
    let text = serde_json::to_string(ours).map_err(|e| TransferError::Protocol(e.to_string()))?;
    link.send_text(text)
        .await
        .map_err(|_| TransferError::PeerGone)?;
    let reply = tokio::time::timeout(transfer::FLUSH_LIMIT * 2, link.recv())
        .await
        .map_err(|_| TransferError::Protocol("no lane list".into()))?;
    match reply {
        Some(Incoming::Text(text)) => serde_json::from_str::<LaneList>(&text)
            .map_err(|_| TransferError::Protocol("a malformed lane list".into())),
        Some(_) => Err(TransferError::Protocol("a malformed lane list".into())),
        None => Err(TransferError::PeerGone),
    }
}

/// Resolves once a peer connection is lost: failed, closed, or silent for a while. The data
/// channel alone may never notice a peer that vanished.
async fn lost(mut state: watch::Receiver<RTCPeerConnectionState>) {
    loop {
        let current = *state.borrow_and_update();
        match current {
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => return,
            RTCPeerConnectionState::Disconnected => {
                tokio::select! {
                    _ = tokio::time::sleep(DISCONNECT_GRACE) => return,
                    changed = state.changed() => if changed.is_err() { return },
                }
                continue;
            }
            _ => {}
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Whether a bind address (`IP:PORT`) is on the loopback interface.
pub fn is_loopback(bind: &str) -> bool {
    bind.starts_with("127.") || bind.starts_with("[::1]")
}

/// Peer connections per transfer that the offering side negotiates by default: one
/// association, now that its loss recovery no longer collapses on a lossy path
/// (docs/TRANSPORT.md). `--lanes` still stripes over more when asked.
pub const DEFAULT_LANES: usize = 1;
/// The most lanes an answering side accepts.
pub const MAX_LANES: usize = 32;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_message_size_follows_rfc_8841() {
        assert_eq!(
            max_message_size("v=0\r\na=max-message-size:262144\r\n"),
            262_144
        );
        assert_eq!(
            max_message_size("v=0\r\na=max-message-size:16384\r\n"),
            16_384
        );
        assert_eq!(
            max_message_size("v=0\r\na=max-message-size:0\r\n"),
            usize::MAX
        );
        assert_eq!(max_message_size("v=0\r\n"), 65_536, "absent means 64 KiB");
        assert_eq!(max_message_size("a=max-message-size:lots\r\n"), 65_536);
    }
}
