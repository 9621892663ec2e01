//! A transfer's WebRTC connection: settings, the [`Connection`] a transfer runs over (one
//! peer connection, one data channel), loss watching, and the limits the peers agree on.
//! Building a peer connection is in `build.rs`, the signaling messages in `signal.rs`,
//! negotiating over the sealed session in `negotiate.rs`, reading the selected path and
//! certificates from the stack's statistics in `route.rs`, which of the other side's
//! candidates are checked in `candidates.rs`.

mod build;
pub mod candidates;
pub mod manual;
pub(crate) mod negotiate;
mod route;
pub(crate) mod signal;

pub use negotiate::{connect_answerer, connect_offerer};
pub use route::Route;
use route::{certificates, selected_route};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use super::channel::DataLink;
use crate::transfer::binding::Certificates;

/// The data channel's label names the protocol version; a peer with another is refused.
pub const CHANNEL_LABEL: &str = "p2pd/3";
/// Largest message either side may send. File chunks are 64 KiB; the ceiling leaves room.
pub const MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// SCTP receive window an association starts with. Larger than the 1 MiB default so a
/// fast short path is not window-bound (2 MiB / 5 ms ≈ 3.4 Gbit/s).
pub const SCTP_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// How far the receive window may grow while the application keeps up (twice its
/// consumption per round trip): 16 MiB / 200 ms ≈ 670 Mbit/s.
pub const SCTP_RECEIVE_WINDOW_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// Hard cap on the channel's unacknowledged send bytes, above the high-water mark.
const SEND_BUFFER_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// From the first signaling message to an open channel. Past it there is no route.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// From ICE connectivity to an open channel: DTLS, SCTP and the channel open.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The association's SCTP receive window at first.
    pub sctp_window_bytes: u32,
    /// How far it may grow (process-wide; not above `sctp_window_bytes`: fixed).
    pub sctp_window_max_bytes: u32,
    /// Loss recovery and congestion control of every association (process-wide).
    pub sctp_recovery: super::sctp::SctpRecovery,
    /// Which of the other side's candidates are checked, beyond the fixed rules of
    /// `candidates.rs`.
    pub remote_candidates: candidates::CandidatePolicy,
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

/// The largest message the SDP's author accepts (RFC 8841): its `a=max-message-size`, no
/// limit when 0. When absent, one byte under the RFC's 64 KiB default: pion/webrtc v3,
/// which announces nothing, reads each message into a 65,535-byte buffer and stops reading
/// the channel at a message of exactly 65,536 bytes.
pub fn max_message_size(sdp: &str) -> usize {
    const RFC_8841_DEFAULT: usize = 64 * 1024 - 1;
    sdp.lines()
        .find_map(|line| line.trim().strip_prefix("a=max-message-size:"))
        .map(|value| match value.trim().parse::<u64>() {
            Ok(0) => usize::MAX,
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(_) => RFC_8841_DEFAULT,
        })
        .unwrap_or(RFC_8841_DEFAULT)
}

/// A connected transfer link: one peer connection carrying one data channel.
pub struct Connection {
    pub pc: Arc<dyn PeerConnection>,
    pub link: DataLink,
    state: watch::Receiver<RTCPeerConnectionState>,
}

impl Drop for Connection {
    /// A connection dropped without `close` (its job was interrupted) still ends: otherwise
    /// the stack keeps answering the peer's checks and the peer never learns we left.
    fn drop(&mut self) {
        let pc = self.pc.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = pc.close().await;
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
        lost(self.state.clone()).await
    }

    /// Which path the selected ICE candidate pair takes. `None` before a pair is selected.
    pub async fn route(&self) -> Option<Route> {
        selected_route(&self.pc).await
    }

    /// Ends the connection. Call only after the application-level goodbye: closing the
    /// peer connection aborts SCTP and drops anything still in flight.
    pub async fn close(self) {
        self.link.close().await;
        let _ = self.pc.close().await;
        // Drop closes again, which is harmless.
    }
}

#[async_trait::async_trait]
impl Certificates for Connection {
    /// The SHA-256 fingerprints of the DTLS certificates the connection actually used.
    async fn certificates(&self) -> Option<(String, String)> {
        certificates(&self.pc).await
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
        assert_eq!(
            max_message_size("v=0\r\n"),
            65_535,
            "absent means 64 KiB, less the byte pion v3 cannot take"
        );
        assert_eq!(max_message_size("a=max-message-size:lots\r\n"), 65_535);
    }
}
