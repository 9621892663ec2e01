//! Negotiating a transfer's peer connection over the sealed signaling session: offer,
//! answer and trickled candidates, bounded waits, the sender's one data channel taken and
//! any other closed, and one fresh attempt when a path was found but the handshake over it
//! did not complete.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription,
};

use super::build::{Watches, build};
use super::candidates::{Filter, MAX_REMOTE_CANDIDATES};
use super::signal::{ATTEMPTS, Fit, Signal, fit, send_signal};
use super::{
    CHANNEL_LABEL, CONNECT_TIMEOUT, Connection, HANDSHAKE_TIMEOUT, PEER_LEFT_GRACE, RtcSettings,
    max_message_size,
};
use crate::rendezvous::{Role, Session};
use crate::rtc::RtcError;
use crate::rtc::channel::DataLink;
use crate::transfer::link::LinkClosed;

/// How long the answering side waits for new offers after giving up an attempt itself.
pub(crate) const OFFERS_AFTER_RETRY: Duration = Duration::from_secs(15);
/// Local candidates waiting to be trickled.
const GATHERED_QUEUE: usize = 256;

pub(super) type Opening =
    std::pin::Pin<Box<dyn Future<Output = Result<DataLink, LinkClosed>> + Send>>;

/// One attempt's peer connection: built at once by the offering side, on the offer by the
/// answering side.
pub(super) struct Attempt {
    pub(super) role: Role,
    settings: RtcSettings,
    /// Which attempt this is (see [`ATTEMPTS`]).
    number: u8,
    pub(super) pc: Option<Arc<dyn PeerConnection>>,
    /// The data channel, once the peer connection exists, until it opens.
    pub(super) opening: Option<Opening>,
    /// The state watches, handed to the peer connection when it is built.
    watches: Option<Watches>,
    pub(super) state: watch::Receiver<RTCPeerConnectionState>,
    pub(super) ice_state: watch::Receiver<RTCIceConnectionState>,
    pub(super) gathering: watch::Receiver<RTCIceGatheringState>,
    candidates: mpsc::Sender<RTCIceCandidateInit>,
    /// Local candidates, to trickle to the peer.
    gathered: mpsc::Receiver<RTCIceCandidateInit>,
    /// What of the other side's candidates is checked.
    filter: Filter,
    /// Candidates the other side trickled in this attempt, kept or not.
    trickled: usize,
}

impl Attempt {
    pub(super) fn new(role: Role, settings: &RtcSettings, number: u8) -> Attempt {
        let (candidates, gathered) = mpsc::channel(GATHERED_QUEUE);
        let (watches, states) = Watches::new();
        Attempt {
            role,
            settings: settings.clone(),
            number,
            pc: None,
            opening: None,
            watches: Some(watches),
            state: states.state,
            ice_state: states.ice_state,
            gathering: states.gathering,
            candidates,
            gathered,
            filter: Filter::new(&settings.bind, &settings.remote_candidates),
            trickled: 0,
        }
    }

    /// The other side's description without the candidates this side does not check;
    /// refused when it lists more than any device has.
    pub(super) fn remote_sdp(&self, sdp: &str) -> Result<String, RtcError> {
        let (kept, dropped) = self.filter.sdp(sdp)?;
        if dropped > 0 {
            info!(
                dropped,
                "the other side's description named addresses this side does not check (loopback, link-local, multicast, outside the allowed networks, or not UDP): left out"
            );
        }
        Ok(kept)
    }

    /// Whether a trickled candidate is checked: one this side may check, within the
    /// attempt's count. An empty one (the end of candidates) names nothing and passes.
    fn takes(&mut self, candidate: &RTCIceCandidateInit) -> bool {
        if candidate.candidate.trim().is_empty() {
            return true;
        }
        self.trickled += 1;
        self.trickled <= MAX_REMOTE_CANDIDATES && self.filter.keeps(&candidate.candidate)
    }

    pub(super) async fn build(
        &mut self,
    ) -> Result<
        (
            Arc<dyn PeerConnection>,
            mpsc::Receiver<Arc<dyn DataChannel>>,
        ),
        RtcError,
    > {
        let watches = self.watches.take().ok_or(RtcError::BadSignal)?;
        // On a task of its own: building a peer connection is a deep call chain, and
        // under a job's futures (resume loop, negotiation, signal handling) a debug
        // build's frames overflowed a worker's 2 MiB stack.
        let (settings, role, candidates) =
            (self.settings.clone(), self.role, self.candidates.clone());
        let (pc, channels) =
            tokio::spawn(async move { build(&settings, role, candidates, watches).await })
                .await
                .map_err(|_| RtcError::ChannelClosed)??;
        self.pc = Some(pc.clone());
        Ok((pc, channels))
    }

    /// The offering side: the peer connection with its channel, and the offer to send.
    pub(super) async fn offer(&mut self) -> Result<Signal, RtcError> {
        let (pc, _) = self.build().await?;
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
        self.opening = Some(Box::pin(DataLink::open(channel, false)));
        Ok(Signal::Offer {
            sdp,
            attempt: self.number,
        })
    }

    /// The attempt's connection once its channel opened (held to the peer's message size);
    /// otherwise the attempt is closed and the error returned.
    pub(super) async fn finish(
        mut self,
        opened: Result<DataLink, RtcError>,
    ) -> Result<Connection, RtcError> {
        let (mut link, pc) = match (opened, self.pc.clone()) {
            (Ok(link), Some(pc)) => (link, pc),
            (opened, _) => {
                self.close().await;
                return Err(opened.err().unwrap_or(RtcError::ChannelClosed));
            }
        };
        if let Some(remote) = pc.remote_description().await {
            link.set_peer_max_message(max_message_size(&remote.sdp));
        }
        Ok(Connection {
            pc,
            link,
            state: self.state.clone(),
        })
    }

    pub(super) async fn close(&mut self) {
        if let Some(pc) = &self.pc {
            let _ = pc.close().await;
        }
    }
}

/// The sending side: creates the channel and offers.
pub async fn connect_offerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let mut attempt = Attempt::new(Role::Sender, settings, 0);
    let offer = match attempt.offer().await {
        Ok(offer) => offer,
        Err(error) => {
            attempt.close().await;
            return Err(error);
        }
    };
    negotiate(attempt, session, Some(offer), cancel).await
}

/// The receiving side: answers the offer and accepts the one channel the peer opens.
pub async fn connect_answerer(
    session: Session,
    settings: &RtcSettings,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let attempt = Attempt::new(Role::Receiver, settings, 0);
    negotiate(attempt, session, None, cancel).await
}

/// The answerer's channel: wait for the peer's, check its label, pump it.
pub(super) fn accept_channel(mut channels: mpsc::Receiver<Arc<dyn DataChannel>>) -> Opening {
    Box::pin(async move {
        let channel = channels.recv().await.ok_or(LinkClosed)?;
        if channel.label().await.ok().as_deref() != Some(CHANNEL_LABEL) {
            warn!("peer opened a channel with an unknown label");
            let _ = channel.close().await;
            return Err(LinkClosed);
        }
        // The remote side's channel is announced once DCEP has opened it.
        DataLink::open(channel, true).await
    })
}

/// The waits of one attempt. Each bounds a phase: finding a path, the handshake over it,
/// a peer that left the rendezvous early, and the new offers of a second attempt.
struct Deadlines {
    /// From the attempt's first signaling message to an open channel.
    connect: Instant,
    /// Once ICE has a path, what remains (DTLS, SCTP, the channel) is quick; if it stalls
    /// there, the route was fine and the handshake was not.
    handshake: Option<Instant>,
    /// The peer left the rendezvous before ICE connected here: it may only be a little
    /// ahead of us, or it may be gone (killed mid-handshake). Wait a moment, not 30 s.
    peer_left: Option<Instant>,
    /// The answering side gave up an attempt: the offering side's new offer is due by
    /// then (it gives up within about the same handshake time, so it is late only if it
    /// is gone or never meant to retry).
    offer: Option<Instant>,
}

impl Deadlines {
    fn start() -> Deadlines {
        Deadlines {
            connect: Instant::now() + CONNECT_TIMEOUT,
            handshake: None,
            peer_left: None,
            offer: None,
        }
    }

    /// The waits of a second attempt on `role`'s side, starting now.
    fn retry(role: Role) -> Deadlines {
        Deadlines {
            offer: (role == Role::Receiver).then(|| Instant::now() + OFFERS_AFTER_RETRY),
            ..Deadlines::start()
        }
    }
}

/// Whether the attempt's DTLS handshake completed (its certificates are known).
async fn dtls_completed(pc: Option<Arc<dyn PeerConnection>>) -> bool {
    match pc {
        Some(pc) => super::route::certificates(&pc).await.is_some(),
        None => false,
    }
}

/// The channel, once open; never, while there is none yet.
async fn opened(opening: &mut Option<Opening>) -> Result<DataLink, LinkClosed> {
    match opening {
        Some(opening) => opening.await,
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Gives up the attempt under way and starts attempt `next` with a new peer connection
/// (new sockets, ICE credentials and DTLS handshake): the offering side offers again, the
/// answering side waits for that offer.
async fn restart(attempt: &mut Attempt, session: &mut Session, next: u8) -> Result<(), RtcError> {
    attempt.close().await;
    *attempt = Attempt::new(attempt.role, &attempt.settings.clone(), next);
    if attempt.role == Role::Sender {
        let offer = attempt.offer().await?;
        send_signal(session, &offer).await?;
    }
    Ok(())
}

async fn negotiate(
    mut attempt: Attempt,
    mut session: Session,
    offer: Option<Signal>,
    cancel: &CancellationToken,
) -> Result<Connection, RtcError> {
    let result = async {
        if let Some(offer) = &offer {
            send_signal(&mut session, offer).await?;
        }
        let mut deadlines = Deadlines::start();
        // Once the peer hangs up the rendezvous (it may, as soon as its side is open),
        // keep waiting for our channel rather than failing.
        let mut signaling = true;
        loop {
            let handshake_expired = until(deadlines.handshake);
            let peer_left = until(deadlines.peer_left.filter(|_| deadlines.handshake.is_none()));
            let offer_due = until(deadlines.offer.filter(|_| attempt.pc.is_none()));
            let mut stalled = false;
            tokio::select! {
                _ = cancel.cancelled() => return Err(RtcError::Cancelled),
                // A second attempt follows a path that was found: not finding one again
                // (or the offering side not offering again) is the handshake's failure.
                _ = tokio::time::sleep_until(deadlines.connect) => {
                    return Err(if attempt.number > 0 { RtcError::HandshakeStalled } else { RtcError::NoRoute });
                }
                _ = handshake_expired => stalled = true,
                _ = offer_due => return Err(RtcError::HandshakeStalled),
                _ = peer_left => return Err(RtcError::Signaling(crate::rendezvous::SignalError::PeerGone)),
                link = opened(&mut attempt.opening), if attempt.opening.is_some() => match link {
                    Ok(link) => return Ok(link),
                    // The channel closed before it opened although ICE had a path: if DTLS
                    // never completed, it gave up its retransmissions (webrtc-rs then
                    // closes the channel), which is a stalled handshake like any other.
                    Err(_) if deadlines.handshake.is_some() && !dtls_completed(attempt.pc.clone()).await => {
                        stalled = true;
                    }
                    Err(_) => return Err(RtcError::ChannelClosed),
                },
                changed = attempt.ice_state.changed() => {
                    let ice = *attempt.ice_state.borrow();
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
                changed = attempt.state.changed() => {
                    if changed.is_err() || *attempt.state.borrow() == RTCPeerConnectionState::Failed {
                        return Err(if deadlines.handshake.is_some() { RtcError::Handshake } else { RtcError::NoRoute });
                    }
                }
                Some(candidate) = attempt.gathered.recv() => {
                    if signaling {
                        // A failed send does not end signaling: what the peer sent before
                        // it left (a refusal, say) is still to be read, and reading is
                        // what tells how it ended.
                        let signal = Signal::Candidate { candidate, attempt: attempt.number };
                        if let Err(error) = send_signal(&mut session, &signal).await {
                            debug!(%error, "a candidate could not be sent");
                        }
                    }
                }
                received = session.recv(), if signaling => match received {
                    Ok(bytes) => {
                        let signal = Signal::decode(&bytes)?;
                        match fit(&signal, attempt.number) {
                            Fit::Current => handle_signal(&mut attempt, &mut session, signal).await?,
                            Fit::NewAttempt => {
                                warn!(attempt = signal.attempt(), "the other side is trying again with a new connection");
                                // Boxed: building a peer connection is a large future, and
                                // this loop is already one.
                                Box::pin(restart(&mut attempt, &mut session, signal.attempt())).await?;
                                deadlines = Deadlines::start();
                                handle_signal(&mut attempt, &mut session, signal).await?;
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
            if stalled {
                // A path was found, so the peer is there; the handshake over it did not
                // complete (packets lost past DTLS's retransmissions, a stalled SCTP
                // setup). A new connection usually gets through; the answering side
                // waits for the offering side's new offer.
                let next = attempt.number + 1;
                if next >= ATTEMPTS || !signaling {
                    return Err(RtcError::HandshakeStalled);
                }
                warn!(attempt = next, "the handshake did not complete over the path found: trying again with a new connection");
                Box::pin(restart(&mut attempt, &mut session, next)).await?;
                deadlines = Deadlines::retry(attempt.role);
            }
        }
    }
    .await;
    // Closing waits for the rendezvous to close too: not on the way to the transfer.
    tokio::spawn(session.close());
    attempt.finish(result).await
}

async fn handle_signal(
    attempt: &mut Attempt,
    session: &mut Session,
    signal: Signal,
) -> Result<(), RtcError> {
    let number = attempt.number;
    match signal {
        Signal::Refused { reason } => return Err(super::signal::refusal(&reason)),
        Signal::Offer { sdp, .. } => {
            // An offer comes from the offering side only, once per attempt.
            if attempt.role != Role::Receiver || attempt.pc.is_some() {
                return Err(RtcError::BadSignal);
            }
            let sdp = attempt.remote_sdp(&sdp)?;
            let (pc, channels) = attempt.build().await?;
            attempt.opening = Some(accept_channel(channels));
            let offer = RTCSessionDescription::offer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(offer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
            let answer = pc.create_answer(None).await.map_err(RtcError::Setup)?;
            let sdp = answer.sdp.clone();
            pc.set_local_description(answer)
                .await
                .map_err(RtcError::Setup)?;
            send_signal(
                session,
                &Signal::Answer {
                    sdp,
                    attempt: number,
                },
            )
            .await?;
        }
        Signal::Answer { sdp, .. } => {
            let sdp = attempt.remote_sdp(&sdp)?;
            let (Role::Sender, Some(pc)) = (attempt.role, &attempt.pc) else {
                return Err(RtcError::BadSignal);
            };
            let answer = RTCSessionDescription::answer(sdp).map_err(|_| RtcError::BadSignal)?;
            pc.set_remote_description(answer)
                .await
                .map_err(|_| RtcError::BadSignal)?;
        }
        Signal::Candidate { candidate, .. } => {
            // A candidate we cannot use, or may not check, is not fatal: others may still
            // connect.
            if !attempt.takes(&candidate) {
                debug!("ignoring a remote candidate this side does not check");
            } else if let Some(pc) = &attempt.pc
                && let Err(error) = pc.add_ice_candidate(candidate).await
            {
                debug!(%error, "ignoring remote candidate");
            }
        }
    }
    Ok(())
}
