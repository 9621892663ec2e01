//! Building a tuned peer connection and negotiating it over the sealed signaling session.

use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use webrtc::data_channel::{DataChannel, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceConnectionState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};

use super::RtcError;
use super::channel::DataLink;
use super::runtime::TunedRuntime;
use crate::rendezvous::crypto::{channel_proof, verify_channel_proof};
use crate::rendezvous::{Role, Session};
use crate::transfer::{self, TransferError};

/// The data channel's label names the protocol version; a peer with another is refused.
pub const CHANNEL_LABEL: &str = "p2pd/1";
/// Largest message either side may send. File chunks are 64 KiB; the ceiling leaves room.
pub const MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// SCTP receive window. Larger than the 1 MiB default so a fast path is not window-bound.
const SCTP_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
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

/// Signaling messages, sealed by the session before they reach the rendezvous.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Signal {
    Offer { sdp: String },
    Answer { sdp: String },
    Candidate { candidate: RTCIceCandidateInit },
}

struct Handler {
    candidates: mpsc::Sender<RTCIceCandidateInit>,
    state: watch::Sender<RTCPeerConnectionState>,
    ice_state: watch::Sender<RTCIceConnectionState>,
    channels: mpsc::Sender<Arc<dyn DataChannel>>,
    /// Whether a remote channel may still be taken (the answerer's one).
    accept_remote: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            // try_send: this runs on the driver, which must never wait on us.
            Ok(init) => {
                let _ = self.candidates.try_send(init);
            }
            Err(error) => debug!(%error, "unusable local candidate"),
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        debug!(%state, "ice connection state");
        self.ice_state.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(%state, "peer connection state");
        self.state.send_replace(state);
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        // One channel per transfer, opened by the sender: the answering side takes the first
        // and closes every other, and the offering side closes all. A handle that is kept or
        // dropped without closing would leave the peer's stream open.
        let take = self
            .accept_remote
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if !take || self.channels.try_send(channel.clone()).is_err() {
            // Closing must not block the driver, so it runs on its own task.
            tokio::spawn(async move {
                let _ = channel.close().await;
            });
        }
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

/// The path a connection takes: straight between the peers, or through a TURN relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub relayed: bool,
    /// For people: "direct (host ↔ host)", "relayed (relay ↔ srflx)", …
    pub description: String,
}

impl Route {
    fn new(local: RTCIceCandidateType, remote: RTCIceCandidateType) -> Route {
        let relayed = local == RTCIceCandidateType::Relay || remote == RTCIceCandidateType::Relay;
        let how = if relayed { "relayed" } else { "direct" };
        Route {
            relayed,
            description: format!("{how} ({local} ↔ {remote})"),
        }
    }
}

/// A connected transfer channel and the connection that carries it.
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
        let mut state = self.state.clone();
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

    /// Which path the selected ICE candidate pair takes, from the connection's statistics.
    /// `None` before a pair is selected.
    pub async fn route(&self) -> Option<Route> {
        let report = self
            .pc
            .get_stats(std::time::Instant::now(), StatsSelector::None)
            .await;
        let pair_id = report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
                Some(t.selected_candidate_pair_id.clone())
            }
            _ => None,
        })?;
        let (local_id, remote_id) = report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::IceCandidatePair(pair) if pair.stats.id == pair_id => Some((
                pair.local_candidate_id.clone(),
                pair.remote_candidate_id.clone(),
            )),
            _ => None,
        })?;
        // webrtc 0.21 names candidates in a pair "candidate:X" but files the candidate
        // entries as "RTCLocalIceCandidate_candidate:X" / "RTCRemoteIceCandidate_…": accept both.
        let same = |entry_id: &str, prefix: &str, id: &str| {
            entry_id == id || entry_id.strip_prefix(prefix) == Some(id)
        };
        let local = report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::LocalCandidate(c)
                if same(&c.stats.id, "RTCLocalIceCandidate_", &local_id) =>
            {
                Some(c.candidate_type)
            }
            _ => None,
        })?;
        let remote = report
            .iter()
            .find_map(|entry| match entry {
                RTCStatsReportEntry::RemoteCandidate(c)
                    if same(&c.stats.id, "RTCRemoteIceCandidate_", &remote_id) =>
                {
                    Some(c.candidate_type)
                }
                _ => None,
            })
            // A remote candidate learned from a connectivity check rather than signaled is not
            // listed; that is what ICE calls peer-reflexive.
            .unwrap_or(RTCIceCandidateType::Prflx);
        Some(Route::new(local, remote))
    }

    /// The second lock on the channel: both sides prove the PAKE key over the DTLS
    /// certificates they actually see, whatever the library checked. Must be the first
    /// exchange on the channel.
    pub async fn authenticate(
        &self,
        binding_key: &[u8; 32],
        role: Role,
    ) -> Result<(), TransferError> {
        let Some((ours, theirs)) = self.certificates().await else {
            return Err(TransferError::Unauthenticated);
        };
        let proof = channel_proof(binding_key, role, &ours, &theirs);
        transfer::exchange_proofs(&self.link, &proof, |peer| {
            verify_channel_proof(binding_key, role, &ours, &theirs, peer)
        })
        .await
    }

    /// The SHA-256 fingerprints of the DTLS certificates this connection actually used:
    /// (ours, the peer's). `None` if DTLS has not completed.
    pub async fn certificates(&self) -> Option<(String, String)> {
        let report = self
            .pc
            .get_stats(std::time::Instant::now(), StatsSelector::None)
            .await;
        let (local_id, remote_id) = report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::Transport(t)
                if !t.local_certificate_id.is_empty() && !t.remote_certificate_id.is_empty() =>
            {
                Some((
                    t.local_certificate_id.clone(),
                    t.remote_certificate_id.clone(),
                ))
            }
            _ => None,
        })?;
        let fingerprint = |id: &str| {
            report.iter().find_map(|entry| match entry {
                RTCStatsReportEntry::Certificate(cert) if cert.stats.id == id => {
                    Some(cert.fingerprint.clone())
                }
                _ => None,
            })
        };
        Some((fingerprint(&local_id)?, fingerprint(&remote_id)?))
    }

    /// Ends the connection. Call only after the application-level goodbye: closing the
    /// peer connection aborts SCTP and drops anything still in flight.
    pub async fn close(self) {
        self.link.close().await;
        let _ = self.pc.close().await;
        // Drop closes again, which is harmless.
    }
}

struct Pending {
    pc: Arc<dyn PeerConnection>,
    candidates: mpsc::Receiver<RTCIceCandidateInit>,
    state: watch::Receiver<RTCPeerConnectionState>,
    ice_state: watch::Receiver<RTCIceConnectionState>,
    channels: mpsc::Receiver<Arc<dyn DataChannel>>,
}

async fn build(settings: &RtcSettings, role: Role) -> Result<Pending, RtcError> {
    let loopback = settings
        .bind
        .iter()
        .any(|a| a.starts_with("127.") || a.starts_with("[::1]"));
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_sctp_max_receive_buffer_size(SCTP_RECEIVE_WINDOW_BYTES)
        .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(MAX_MESSAGE_BYTES))
        .with_include_loopback_candidate(loopback)
        .build();
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(
            settings
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
        )
        .with_ice_transport_policy(if settings.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        })
        .build();
    let (candidates_tx, candidates) = mpsc::channel(256);
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (ice_state_tx, ice_state) = watch::channel(RTCIceConnectionState::New);
    let (channels_tx, channels) = mpsc::channel(1);
    let handler = Handler {
        candidates: candidates_tx,
        state: state_tx,
        ice_state: ice_state_tx,
        channels: channels_tx,
        accept_remote: std::sync::atomic::AtomicBool::new(role == Role::Receiver),
    };
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(setting_engine)
        .with_runtime(Arc::new(TunedRuntime {
            buffer_bytes: settings.udp_buffer_bytes,
        }))
        .with_handler(Arc::new(handler))
        .with_udp_addrs(settings.bind.clone())
        .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT_BYTES)
        .build()
        .await
        .map_err(RtcError::Setup)?;
    Ok(Pending {
        pc: Arc::new(pc),
        candidates,
        state,
        ice_state,
        channels,
    })
}

/// The sending side: creates the channel and the offer.
pub async fn connect_offerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let pending = build(settings, Role::Sender).await?;
    let channel = pending
        .pc
        .create_data_channel(
            CHANNEL_LABEL,
            Some(RTCDataChannelInit {
                ordered: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(RtcError::Setup)?;
    let offer = pending
        .pc
        .create_offer(None)
        .await
        .map_err(RtcError::Setup)?;
    let sdp = offer.sdp.clone();
    pending
        .pc
        .set_local_description(offer)
        .await
        .map_err(RtcError::Setup)?;
    let opening = DataLink::open(channel, false);
    negotiate(
        pending,
        session,
        Some(Signal::Offer { sdp }),
        opening,
        cancel,
    )
    .await
}

/// The receiving side: answers the offer and accepts the one channel the peer opens.
pub async fn connect_answerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let mut pending = build(settings, Role::Receiver).await?;
    let mut channels = std::mem::replace(&mut pending.channels, mpsc::channel(1).1);
    let opening = async move {
        let channel = channels
            .recv()
            .await
            .ok_or(crate::transfer::link::LinkClosed)?;
        if channel.label().await.ok().as_deref() != Some(CHANNEL_LABEL) {
            warn!("peer opened a channel with an unknown label");
            let _ = channel.close().await;
            return Err(crate::transfer::link::LinkClosed);
        }
        // The remote side's channel is announced once DCEP has opened it.
        DataLink::open(channel, true).await
    };
    negotiate(pending, session, None, opening, cancel).await
}

async fn negotiate(
    mut pending: Pending,
    mut session: Session,
    first: Option<Signal>,
    opening: impl Future<Output = Result<DataLink, crate::transfer::link::LinkClosed>>,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let pc = pending.pc.clone();
    let result = async {
        if let Some(signal) = first {
            send_signal(&mut session, &signal).await?;
        }
        tokio::pin!(opening);
        let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
        tokio::pin!(deadline);
        // Once the peer hangs up the rendezvous (it may, as soon as its side is open),
        // keep waiting for our channel rather than failing.
        let mut signaling = true;
        // Once ICE has a path, what remains (DTLS, SCTP, the channel) is quick; if it stalls
        // or fails there, the route was fine and the handshake was not.
        let mut handshake_deadline: Option<tokio::time::Instant> = None;
        // The peer left the rendezvous before ICE connected here: it may only be a little
        // ahead of us, or it may be gone (killed mid-handshake). Wait a moment, not 30 s.
        let mut peer_left_deadline: Option<tokio::time::Instant> = None;
        loop {
            let handshake_expired = async {
                match handshake_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let peer_left = async {
                match peer_left_deadline {
                    Some(at) if handshake_deadline.is_none() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(RtcError::Cancelled),
                _ = &mut deadline => return Err(RtcError::NoRoute),
                _ = handshake_expired => return Err(RtcError::Handshake),
                _ = peer_left => return Err(RtcError::Signaling(crate::rendezvous::SignalError::PeerGone)),
                link = &mut opening => return link.map_err(|_| RtcError::ChannelClosed),
                changed = pending.ice_state.changed() => {
                    let ice = *pending.ice_state.borrow();
                    if changed.is_ok()
                        && handshake_deadline.is_none()
                        && matches!(ice, RTCIceConnectionState::Connected | RTCIceConnectionState::Completed)
                    {
                        handshake_deadline = Some(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
                    }
                }
                changed = pending.state.changed() => {
                    if changed.is_err() || *pending.state.borrow() == RTCPeerConnectionState::Failed {
                        return Err(if handshake_deadline.is_some() { RtcError::Handshake } else { RtcError::NoRoute });
                    }
                }
                Some(candidate) = pending.candidates.recv() => {
                    if signaling {
                        signaling = send_signal(&mut session, &Signal::Candidate { candidate }).await.is_ok();
                    }
                }
                received = session.recv(), if signaling => match received {
                    Ok(bytes) => handle_signal(&pc, &mut session, &bytes).await?,
                    Err(error) => {
                        debug!(%error, "signaling ended");
                        signaling = false;
                        peer_left_deadline = Some(tokio::time::Instant::now() + PEER_LEFT_GRACE);
                    }
                },
            }
        }
    }
    .await;
    session.close().await;
    match result {
        Ok(mut link) => {
            if let Some(remote) = pc.remote_description().await {
                link.set_peer_max_message(max_message_size(&remote.sdp));
            }
            Ok(Connection {
                pc,
                link,
                state: pending.state.clone(),
            })
        }
        Err(error) => {
            let _ = pc.close().await;
            Err(error)
        }
    }
}

async fn handle_signal(
    pc: &Arc<dyn PeerConnection>,
    session: &mut Session,
    bytes: &[u8],
) -> Result<(), RtcError> {
    let signal: Signal = serde_json::from_slice(bytes).map_err(|_| RtcError::BadSignal)?;
    match signal {
        Signal::Offer { sdp } => {
            let offer = RTCSessionDescription::offer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(offer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
            let answer = pc.create_answer(None).await.map_err(RtcError::Setup)?;
            let sdp = answer.sdp.clone();
            pc.set_local_description(answer)
                .await
                .map_err(RtcError::Setup)?;
            send_signal(session, &Signal::Answer { sdp }).await?;
        }
        Signal::Answer { sdp } => {
            let answer = RTCSessionDescription::answer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(answer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
        }
        Signal::Candidate { candidate } => {
            // A candidate we cannot use is not fatal: others may still connect.
            if let Err(error) = pc.add_ice_candidate(candidate).await {
                debug!(%error, "ignoring remote candidate");
            }
        }
    }
    Ok(())
}

async fn send_signal(session: &mut Session, signal: &Signal) -> Result<(), RtcError> {
    let bytes = serde_json::to_vec(signal).map_err(|_| RtcError::BadSignal)?;
    session.send(&bytes).await.map_err(RtcError::Signaling)
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
        assert_eq!(max_message_size("v=0\r\n"), 65_536, "absent means 64 KiB");
        assert_eq!(max_message_size("a=max-message-size:lots\r\n"), 65_536);
    }

    #[test]
    fn a_relay_on_either_side_makes_the_route_relayed() {
        use RTCIceCandidateType::*;
        assert_eq!(
            Route::new(Host, Host),
            Route {
                relayed: false,
                description: "direct (host ↔ host)".into()
            }
        );
        assert!(!Route::new(Srflx, Prflx).relayed);
        assert!(Route::new(Relay, Host).relayed);
        assert!(Route::new(Srflx, Relay).relayed);
        assert!(Route::new(Relay, Relay).description.starts_with("relayed"));
    }
}
