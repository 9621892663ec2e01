//! Building tuned peer connections (one per lane) and negotiating them over the sealed
//! signaling session: offers, answers and trickled candidates, bounded waits, the first
//! data channel taken and every other closed.

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
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use super::{
    CHANNEL_LABEL, CONNECT_TIMEOUT, Connection, HANDSHAKE_TIMEOUT, LanePc, MAX_LANES,
    MAX_MESSAGE_BYTES, PEER_LEFT_GRACE, RtcSettings, SEND_BUFFER_LIMIT_BYTES, is_loopback,
    max_message_size,
};
use crate::rendezvous::{Role, Session};
use crate::rtc::RtcError;
use crate::rtc::channel::DataLink;
use crate::rtc::runtime::TunedRuntime;
use crate::transfer::stripe::Striped;

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

/// After lane 0 opens, how long the other lanes may still take; any not open by then are
/// dropped and the transfer goes on without them.
pub(super) const EXTRA_LANES_GRACE: Duration = Duration::from_secs(5);

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
