//! Negotiating a transfer's peer connections (one per lane) over the sealed signaling
//! session: offers, answers and trickled candidates, bounded waits, the first data channel
//! taken and every other closed, and one fresh attempt when a path was found but the
//! handshake over it did not complete.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use webrtc::data_channel::{DataChannel, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCIceConnectionState, RTCPeerConnectionState,
    RTCSessionDescription,
};

use super::build::{Watches, build};
use super::signal::{ATTEMPTS, Fit, Signal, fit, send_signal};
use super::{
    CHANNEL_LABEL, CONNECT_TIMEOUT, Connection, HANDSHAKE_TIMEOUT, LanePc, MAX_LANES,
    PEER_LEFT_GRACE, RtcSettings, max_message_size,
};
use crate::rendezvous::{Role, Session};
use crate::rtc::RtcError;
use crate::rtc::channel::DataLink;
use crate::transfer::stripe::Striped;

/// After lane 0 opens, how long the other lanes may still take; any not open by then are
/// dropped and the transfer goes on without them.
pub(super) const EXTRA_LANES_GRACE: Duration = Duration::from_secs(5);

type Opening = std::pin::Pin<
    Box<dyn Future<Output = (u8, Result<DataLink, crate::transfer::link::LinkClosed>)> + Send>,
>;

/// The peer connections of one negotiation, by lane.
struct Lanes {
    role: Role,
    settings: RtcSettings,
    /// Which attempt these peer connections belong to (see [`ATTEMPTS`]).
    attempt: u8,
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
    zero: LaneZero,
    /// Local candidates of every lane, to trickle to the peer.
    gathered: mpsc::Receiver<(u8, RTCIceCandidateInit)>,
}

impl Lanes {
    fn new(role: Role, settings: &RtcSettings, attempt: u8) -> Lanes {
        let (candidates, gathered) = mpsc::channel(256 * MAX_LANES);
        let (first, state, ice_state) = Watches::new();
        Lanes {
            role,
            settings: settings.clone(),
            attempt,
            candidates,
            pcs: Default::default(),
            openings: Default::default(),
            first: Some((first, state.clone())),
            zero: LaneZero { state, ice_state },
            gathered,
        }
    }

    /// The offering side's lanes: each gets its channel, and their offers are returned.
    async fn offer(&mut self) -> Result<Vec<Signal>, RtcError> {
        let mut offers = Vec::new();
        let count = self.settings.lanes.clamp(1, MAX_LANES) as u8;
        for lane in 0..count {
            let result = async {
                let (pc, _) = self.add(lane).await?;
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
                    self.close_all().await;
                    return Err(error);
                }
            };
            self.openings.push(Box::pin(async move {
                (lane, DataLink::open(channel, false).await)
            }));
            offers.push(Signal::Offer {
                sdp,
                lane,
                attempt: self.attempt,
            });
        }
        Ok(offers)
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
    let mut lanes = Lanes::new(Role::Sender, settings, 0);
    let offers = lanes.offer().await?;
    negotiate(lanes, session, offers, cancel).await
}

/// The receiving side: answers each lane's offer and accepts the one channel the peer opens
/// on it.
pub async fn connect_answerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let lanes = Lanes::new(Role::Receiver, settings, 0);
    negotiate(lanes, session, Vec::new(), cancel).await
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

/// The waits of one attempt. Each bounds a phase: finding a path, the handshake over it,
/// a peer that left the rendezvous early, and the lanes after lane 0.
struct Deadlines {
    /// From the attempt's first signaling message to an open channel.
    connect: Instant,
    /// Once ICE has a path, what remains (DTLS, SCTP, the channel) is quick; if it stalls
    /// or fails there, the route was fine and the handshake was not.
    handshake: Option<Instant>,
    /// The peer left the rendezvous before ICE connected here: it may only be a little
    /// ahead of us, or it may be gone (killed mid-handshake). Wait a moment, not 30 s.
    peer_left: Option<Instant>,
    /// Lane 0 is open: the others get a little longer, then go on without them.
    extras: Option<Instant>,
    /// The answering side gave up an attempt: the offering side's new offers are due by
    /// then (it gives up within about the same handshake time, so it is late only if it
    /// is gone or never meant to retry).
    offers: Option<Instant>,
}

impl Deadlines {
    fn start() -> Deadlines {
        Deadlines {
            connect: Instant::now() + CONNECT_TIMEOUT,
            handshake: None,
            peer_left: None,
            extras: None,
            offers: None,
        }
    }

    /// The waits of a second attempt on `role`'s side, starting now.
    fn retry(role: Role) -> Deadlines {
        Deadlines {
            offers: (role == Role::Receiver).then(|| Instant::now() + OFFERS_AFTER_RETRY),
            ..Deadlines::start()
        }
    }
}

/// How long the answering side waits for new offers after giving up an attempt itself.
const OFFERS_AFTER_RETRY: Duration = Duration::from_secs(15);

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Gives up the attempt under way and starts attempt `next` with new peer connections
/// (new sockets, ICE credentials, DTLS certificates' handshake): the offering side offers
/// again, the answering side waits for those offers.
async fn restart(lanes: &mut Lanes, session: &mut Session, next: u8) -> Result<(), RtcError> {
    lanes.close_all().await;
    *lanes = Lanes::new(lanes.role, &lanes.settings.clone(), next);
    if lanes.role == Role::Sender {
        for offer in lanes.offer().await? {
            send_signal(session, &offer).await?;
        }
    }
    Ok(())
}

async fn negotiate(
    mut lanes: Lanes,
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
        let mut deadlines = Deadlines::start();
        // Once the peer hangs up the rendezvous (it may, as soon as its side is open),
        // keep waiting for our channels rather than failing.
        let mut signaling = true;
        loop {
            if opened.contains_key(&0) && lanes.openings.is_empty() {
                return Ok(());
            }
            let handshake_expired = until(deadlines.handshake.filter(|_| deadlines.extras.is_none()));
            let peer_left = until(deadlines.peer_left.filter(|_| deadlines.handshake.is_none()));
            let mut handshake_stalled = false;
            tokio::select! {
                _ = cancel.cancelled() => return Err(RtcError::Cancelled),
                // A second attempt follows a path that was found: not finding one again
                // (or the offering side not offering again) is the handshake's failure.
                _ = tokio::time::sleep_until(deadlines.connect), if deadlines.extras.is_none() => {
                    return Err(if lanes.attempt > 0 { RtcError::HandshakeStalled } else { RtcError::NoRoute });
                }
                _ = handshake_expired => handshake_stalled = true,
                _ = until(deadlines.offers.filter(|_| lanes.pcs.is_empty())) => return Err(RtcError::HandshakeStalled),
                _ = peer_left => return Err(RtcError::Signaling(crate::rendezvous::SignalError::PeerGone)),
                _ = until(deadlines.extras) => {
                    debug!(open = opened.len(), "going on without the lanes still opening");
                    return Ok(());
                }
                Some((lane, link)) = lanes.openings.next(), if !lanes.openings.is_empty() => match link {
                    Ok(link) => {
                        if lane == 0 {
                            deadlines.extras = Some(Instant::now() + EXTRA_LANES_GRACE);
                        }
                        opened.insert(lane, link);
                    }
                    Err(_) if lane == 0 => return Err(RtcError::ChannelClosed),
                    Err(_) => debug!(lane, "a lane closed while opening"),
                },
                changed = lanes.zero.ice_state.changed() => {
                    let ice = *lanes.zero.ice_state.borrow();
                    if changed.is_ok()
                        && deadlines.handshake.is_none()
                        && matches!(ice, RTCIceConnectionState::Connected | RTCIceConnectionState::Completed)
                    {
                        deadlines.handshake = Some(Instant::now() + HANDSHAKE_TIMEOUT);
                    }
                }
                // Failing (rather than stalling) after ICE found a path is the handshake
                // refused. (webrtc-rs 0.21 reports a DTLS error, such as a certificate
                // other than the announced one, as neither: the handshake just stalls.)
                changed = lanes.zero.state.changed() => {
                    if changed.is_err() || *lanes.zero.state.borrow() == RTCPeerConnectionState::Failed {
                        return Err(if deadlines.handshake.is_some() { RtcError::Handshake } else { RtcError::NoRoute });
                    }
                }
                Some((lane, candidate)) = lanes.gathered.recv() => {
                    if signaling {
                        let signal = Signal::Candidate { candidate, lane, attempt: lanes.attempt };
                        signaling = send_signal(&mut session, &signal).await.is_ok();
                    }
                }
                received = session.recv(), if signaling => match received {
                    Ok(bytes) => {
                        let signal = Signal::decode(&bytes)?;
                        match fit(&signal, lanes.attempt) {
                            Fit::Current => handle_signal(&mut lanes, &mut session, signal).await?,
                            Fit::NewAttempt => {
                                warn!(attempt = signal.attempt(), "the other side is trying again with new connections");
                                // Boxed: building peer connections is a large future, and this loop is already one.
                                Box::pin(restart(&mut lanes, &mut session, signal.attempt())).await?;
                                opened.clear();
                                deadlines = Deadlines::start();
                                handle_signal(&mut lanes, &mut session, signal).await?;
                            }
                            Fit::Stale => debug!("ignoring a signal of an abandoned attempt"),
                        }
                    }
                    // A forged or altered message is an attack, not a peer that left.
                    Err(error @ crate::rendezvous::SignalError::BadSeal) => {
                        return Err(RtcError::Signaling(error));
                    }
                    Err(error) => {
                        debug!(%error, "signaling ended");
                        signaling = false;
                        deadlines.peer_left = Some(Instant::now() + PEER_LEFT_GRACE);
                    }
                },
            }
            if handshake_stalled {
                // A path was found, so the peer is there; the handshake over it did not
                // complete (packets lost past DTLS's retransmissions, a stalled SCTP
                // setup). New connections usually get through; the answering side waits
                // for the offering side's new offers.
                let next = lanes.attempt + 1;
                if next >= ATTEMPTS || !signaling {
                    return Err(RtcError::HandshakeStalled);
                }
                warn!(attempt = next, "the handshake did not complete over the path found: trying again with new connections");
                Box::pin(restart(&mut lanes, &mut session, next)).await?;
                opened.clear();
                deadlines = Deadlines::retry(lanes.role);
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
    signal: Signal,
) -> Result<(), RtcError> {
    let attempt = lanes.attempt;
    match signal {
        Signal::Offer { sdp, lane, .. } => {
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
            send_signal(session, &Signal::Answer { sdp, lane, attempt }).await?;
        }
        Signal::Answer { sdp, lane, .. } => {
            let Some((pc, _)) = lanes.pcs.get(&lane) else {
                return Err(RtcError::BadSignal);
            };
            let answer = RTCSessionDescription::answer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(answer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
        }
        Signal::Candidate {
            candidate, lane, ..
        } => {
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
