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

/// Signaling messages, sealed by the session before they reach the rendezvous. `lane`
/// names the peer connection (0 when absent).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Signal {
    Offer {
        sdp: String,
        #[serde(default)]
        lane: u8,
    },
    Answer {
        sdp: String,
        #[serde(default)]
        lane: u8,
    },
    Candidate {
        candidate: RTCIceCandidateInit,
        #[serde(default)]
        lane: u8,
    },
}

struct Handler {
    lane: u8,
    candidates: mpsc::Sender<(u8, RTCIceCandidateInit)>,
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
                let _ = self.candidates.try_send((self.lane, init));
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
    /// The same path, striped over `lanes` peer connections.
    pub fn striped(mut self, lanes: usize) -> Route {
        if lanes > 1 {
            self.description = format!("{} over {lanes} connections", self.description);
        }
        self
    }

    fn new(local: RTCIceCandidateType, remote: RTCIceCandidateType) -> Route {
        let relayed = local == RTCIceCandidateType::Relay || remote == RTCIceCandidateType::Relay;
        let how = if relayed { "relayed" } else { "direct" };
        Route {
            relayed,
            description: format!("{how} ({local} ↔ {remote})"),
        }
    }
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

/// The selected ICE candidate pair of a peer connection: its path and ICE's latest round
/// trip time on it.
struct SelectedPair {
    route: Route,
    rtt: Duration,
}

async fn selected_pair(pc: &Arc<dyn PeerConnection>) -> Option<SelectedPair> {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let pair_id = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
            Some(t.selected_candidate_pair_id.clone())
        }
        _ => None,
    })?;
    let (local_id, remote_id, rtt) = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::IceCandidatePair(pair) if pair.stats.id == pair_id => Some((
            pair.local_candidate_id.clone(),
            pair.remote_candidate_id.clone(),
            pair.current_round_trip_time,
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
    Some(SelectedPair {
        route: Route::new(local, remote),
        rtt: Duration::try_from_secs_f64(rtt).unwrap_or_default(),
    })
}

async fn certificates(pc: &Arc<dyn PeerConnection>) -> Option<(String, String)> {
    let report = pc
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
/// After lane 0 opens, how long the other lanes may still take; any not open by then are
/// dropped and the transfer goes on without them.
const EXTRA_LANES_GRACE: Duration = Duration::from_secs(5);

/// The state watches of a peer connection under construction.
struct Watches {
    state: watch::Sender<RTCPeerConnectionState>,
    ice_state: watch::Sender<RTCIceConnectionState>,
}

impl Watches {
    fn new() -> (
        Watches,
        watch::Receiver<RTCPeerConnectionState>,
        watch::Receiver<RTCIceConnectionState>,
    ) {
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (ice_state, ice_rx) = watch::channel(RTCIceConnectionState::New);
        (Watches { state, ice_state }, state_rx, ice_rx)
    }
}

async fn build(
    settings: &RtcSettings,
    role: Role,
    lane: u8,
    candidates: mpsc::Sender<(u8, RTCIceCandidateInit)>,
    watches: Watches,
) -> Result<
    (
        Arc<dyn PeerConnection>,
        mpsc::Receiver<Arc<dyn DataChannel>>,
    ),
    RtcError,
> {
    let loopback = settings.bind.iter().any(|a| is_loopback(a));
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_sctp_max_receive_buffer_size(settings.sctp_window_bytes)
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
    let (channels_tx, channels) = mpsc::channel(1);
    let handler = Handler {
        lane,
        candidates,
        state: watches.state,
        ice_state: watches.ice_state,
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
    Ok((Arc::new(pc), channels))
}

type Opening = std::pin::Pin<
    Box<dyn Future<Output = (u8, Result<DataLink, crate::transfer::link::LinkClosed>)> + Send>,
>;

/// The peer connections of one negotiation, by lane.
struct Lanes {
    role: Role,
    settings: RtcSettings,
    candidates: mpsc::Sender<(u8, RTCIceCandidateInit)>,
    pcs: std::collections::BTreeMap<
        u8,
        (
            Arc<dyn PeerConnection>,
            watch::Receiver<RTCPeerConnectionState>,
        ),
    >,
    openings: futures_util::stream::FuturesUnordered<Opening>,
    /// Lane 0's watches until its connection is built (the answerer builds it on the
    /// offer), with a receiver of its state for the connection's entry.
    first: Option<(Watches, watch::Receiver<RTCPeerConnectionState>)>,
}

impl Lanes {
    fn new(
        role: Role,
        settings: &RtcSettings,
    ) -> (Lanes, LaneZero, mpsc::Receiver<(u8, RTCIceCandidateInit)>) {
        let (candidates, candidates_rx) = mpsc::channel(256 * MAX_LANES);
        let (first, state, ice_state) = Watches::new();
        let lanes = Lanes {
            role,
            settings: settings.clone(),
            candidates,
            pcs: Default::default(),
            openings: Default::default(),
            first: Some((first, state.clone())),
        };
        (lanes, LaneZero { state, ice_state }, candidates_rx)
    }

    async fn add(
        &mut self,
        lane: u8,
    ) -> Result<
        (
            Arc<dyn PeerConnection>,
            mpsc::Receiver<Arc<dyn DataChannel>>,
        ),
        RtcError,
    > {
        let (watches, state) = match (lane, self.first.take()) {
            (0, Some(first)) => first,
            (_, first) => {
                self.first = first;
                let (watches, state, _) = Watches::new();
                (watches, state)
            }
        };
        let (pc, channels) = build(
            &self.settings,
            self.role,
            lane,
            self.candidates.clone(),
            watches,
        )
        .await?;
        self.pcs.insert(lane, (pc.clone(), state));
        Ok((pc, channels))
    }

    async fn close_all(&mut self) {
        for (pc, _) in self.pcs.values() {
            let _ = pc.close().await;
        }
    }
}

/// Lane 0's states, which decide whether the negotiation succeeds.
struct LaneZero {
    state: watch::Receiver<RTCPeerConnectionState>,
    ice_state: watch::Receiver<RTCIceConnectionState>,
}

/// The sending side: creates the lanes' channels and offers.
pub async fn connect_offerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let (mut lanes, zero, candidates) = Lanes::new(Role::Sender, settings);
    let mut offers = Vec::new();
    let count = settings.lanes.clamp(1, MAX_LANES) as u8;
    for lane in 0..count {
        let result = async {
            let (pc, _) = lanes.add(lane).await?;
            let channel = pc
                .create_data_channel(
                    CHANNEL_LABEL,
                    Some(RTCDataChannelInit {
                        ordered: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(RtcError::Setup)?;
            let offer = pc.create_offer(None).await.map_err(RtcError::Setup)?;
            let sdp = offer.sdp.clone();
            pc.set_local_description(offer)
                .await
                .map_err(RtcError::Setup)?;
            Ok::<_, RtcError>((channel, sdp))
        }
        .await;
        let (channel, sdp) = match result {
            Ok(built) => built,
            Err(error) => {
                lanes.close_all().await;
                return Err(error);
            }
        };
        lanes.openings.push(Box::pin(async move {
            (lane, DataLink::open(channel, false).await)
        }));
        offers.push(Signal::Offer { sdp, lane });
    }
    negotiate(lanes, zero, candidates, session, offers, cancel).await
}

/// The receiving side: answers each lane's offer and accepts the one channel the peer opens
/// on it.
pub async fn connect_answerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let (lanes, zero, candidates) = Lanes::new(Role::Receiver, settings);
    negotiate(lanes, zero, candidates, session, Vec::new(), cancel).await
}

/// The answerer's side of a lane: wait for the peer's channel, check its label, pump it.
fn accept_channel(lane: u8, mut channels: mpsc::Receiver<Arc<dyn DataChannel>>) -> Opening {
    Box::pin(async move {
        let opened = async {
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
        (lane, opened.await)
    })
}

async fn negotiate(
    mut lanes: Lanes,
    mut zero: LaneZero,
    mut candidates: mpsc::Receiver<(u8, RTCIceCandidateInit)>,
    mut session: Session,
    first: Vec<Signal>,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    use futures_util::StreamExt;
    let mut opened: std::collections::BTreeMap<u8, DataLink> = Default::default();
    let result = async {
        for signal in &first {
            send_signal(&mut session, signal).await?;
        }
        let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
        tokio::pin!(deadline);
        // Once the peer hangs up the rendezvous (it may, as soon as its side is open),
        // keep waiting for our channels rather than failing.
        let mut signaling = true;
        // Once ICE has a path, what remains (DTLS, SCTP, the channel) is quick; if it stalls
        // or fails there, the route was fine and the handshake was not.
        let mut handshake_deadline: Option<tokio::time::Instant> = None;
        // The peer left the rendezvous before ICE connected here: it may only be a little
        // ahead of us, or it may be gone (killed mid-handshake). Wait a moment, not 30 s.
        let mut peer_left_deadline: Option<tokio::time::Instant> = None;
        // Lane 0 is open: the others get a little longer, then go on without them.
        let mut extras_deadline: Option<tokio::time::Instant> = None;
        loop {
            if opened.contains_key(&0) && lanes.openings.is_empty() {
                return Ok(());
            }
            let handshake_expired = async {
                match handshake_deadline {
                    Some(at) if extras_deadline.is_none() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            let peer_left = async {
                match peer_left_deadline {
                    Some(at) if handshake_deadline.is_none() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            let extras_expired = async {
                match extras_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(RtcError::Cancelled),
                _ = &mut deadline, if extras_deadline.is_none() => return Err(RtcError::NoRoute),
                _ = handshake_expired => return Err(RtcError::Handshake),
                _ = peer_left => return Err(RtcError::Signaling(crate::rendezvous::SignalError::PeerGone)),
                _ = extras_expired => {
                    debug!(open = opened.len(), "going on without the lanes still opening");
                    return Ok(());
                }
                Some((lane, link)) = lanes.openings.next(), if !lanes.openings.is_empty() => match link {
                    Ok(link) => {
                        if lane == 0 {
                            extras_deadline = Some(tokio::time::Instant::now() + EXTRA_LANES_GRACE);
                        }
                        opened.insert(lane, link);
                    }
                    Err(_) if lane == 0 => return Err(RtcError::ChannelClosed),
                    Err(_) => debug!(lane, "a lane closed while opening"),
                },
                changed = zero.ice_state.changed() => {
                    let ice = *zero.ice_state.borrow();
                    if changed.is_ok()
                        && handshake_deadline.is_none()
                        && matches!(ice, RTCIceConnectionState::Connected | RTCIceConnectionState::Completed)
                    {
                        handshake_deadline = Some(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
                    }
                }
                changed = zero.state.changed() => {
                    if changed.is_err() || *zero.state.borrow() == RTCPeerConnectionState::Failed {
                        return Err(if handshake_deadline.is_some() { RtcError::Handshake } else { RtcError::NoRoute });
                    }
                }
                Some((lane, candidate)) = candidates.recv() => {
                    if signaling {
                        signaling = send_signal(&mut session, &Signal::Candidate { candidate, lane }).await.is_ok();
                    }
                }
                received = session.recv(), if signaling => match received {
                    Ok(bytes) => handle_signal(&mut lanes, &mut session, &bytes).await?,
                    // A forged or altered message is an attack, not a peer that left.
                    Err(error @ crate::rendezvous::SignalError::BadSeal) => {
                        return Err(RtcError::Signaling(error));
                    }
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
    if let Err(error) = result {
        lanes.close_all().await;
        return Err(error);
    }
    let mut lane_pcs = Vec::new();
    let mut links = Vec::new();
    for (id, (pc, state)) in std::mem::take(&mut lanes.pcs) {
        let Some(mut link) = opened.remove(&id) else {
            let _ = pc.close().await;
            continue;
        };
        if let Some(remote) = pc.remote_description().await {
            link.set_peer_max_message(max_message_size(&remote.sdp));
        }
        lane_pcs.push(LanePc { id, pc, state });
        links.push(link);
    }
    // The map is ordered by lane, and negotiation succeeds only once lane 0 is open.
    let Some(pc) = lane_pcs
        .first()
        .filter(|lane| lane.id == 0)
        .map(|lane| lane.pc.clone())
    else {
        return Err(RtcError::ChannelClosed);
    };
    Ok(Connection {
        pc,
        link: Striped::new(links),
        lanes: lane_pcs,
        stripe_from_rtt: lanes.settings.stripe_from_rtt,
        striped: false,
    })
}

async fn handle_signal(
    lanes: &mut Lanes,
    session: &mut Session,
    bytes: &[u8],
) -> Result<(), RtcError> {
    let signal: Signal = serde_json::from_slice(bytes).map_err(|_| RtcError::BadSignal)?;
    match signal {
        Signal::Offer { sdp, lane } => {
            // Offers come from the offering side only, once per lane.
            if lanes.role != Role::Receiver
                || usize::from(lane) >= MAX_LANES
                || lanes.pcs.contains_key(&lane)
            {
                return Err(RtcError::BadSignal);
            }
            let (pc, channels) = lanes.add(lane).await?;
            lanes.openings.push(accept_channel(lane, channels));
            let offer = RTCSessionDescription::offer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(offer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
            let answer = pc.create_answer(None).await.map_err(RtcError::Setup)?;
            let sdp = answer.sdp.clone();
            pc.set_local_description(answer)
                .await
                .map_err(RtcError::Setup)?;
            send_signal(session, &Signal::Answer { sdp, lane }).await?;
        }
        Signal::Answer { sdp, lane } => {
            let Some((pc, _)) = lanes.pcs.get(&lane) else {
                return Err(RtcError::BadSignal);
            };
            let answer = RTCSessionDescription::answer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(answer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
        }
        Signal::Candidate { candidate, lane } => {
            // A candidate we cannot use is not fatal: others may still connect.
            if let Some((pc, _)) = lanes.pcs.get(&lane)
                && let Err(error) = pc.add_ice_candidate(candidate).await
            {
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
