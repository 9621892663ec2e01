//! The rendezvous server: pairs two daemons by nameplate and forwards opaque blobs.
//!
//! It never sees a code's words, file names, addresses or SDP: after pairing it only moves
//! sealed bytes. Every connection, slot and message is bounded, and so is every wait: a
//! connection must ask for something within `fresh_deadline`, and a claimer must complete
//! the key exchange within `pake_deadline`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::admission::{Admission, Admit, Standing};
use super::ice::IceHandout;
use super::limits::{Action, AddressTable, MissBudget, PerAddressLimits};
use super::messages::{ClientMessage, ServerErrorKind, ServerMessage};
use super::pair::{PAIR_LIFETIME, PairState, RelayBudget, misses_per_minute, nameplate_space};
use super::tls::ServerTls;

/// Largest WebSocket message accepted; SDPs and candidates are far smaller.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Time a client gets to finish the TLS and WebSocket handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a paired connection may go without a message (pings do not count) before it is
/// dropped.
pub(crate) const PAIRED_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages queued toward one connection before its sender waits: with messages of at
/// most 64 KiB, 1 MiB per connection whose client stops reading (signaling needs a few).
const OUTBOUND_QUEUE: usize = 16;
/// Bytes read from a socket at a time. tungstenite's default (128 KiB) is reserved per
/// connection, which made an idle connection cost ~140 KiB; a larger message still
/// arrives, in more reads.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Connections turned away at once with a `busy` answer; past that they are just closed,
/// so answering cannot itself become the way to exhaust the server.
const BUSY_ANSWERS: usize = 64;
/// Time a turned-away connection gets to complete its handshakes and read `busy`.
const BUSY_ANSWER_TIME: Duration = Duration::from_secs(3);
/// What both sides hear when a claimer did not complete the key exchange.
const ABANDONED: &str = "the code was claimed but the key exchange was not completed";

#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// How long an allocated nameplate waits for its peer.
    pub slot_ttl: Duration,
    pub max_slots: usize,
    /// Connections held at once; when full, an idle one gives way (see `admission`).
    pub max_connections: usize,
    pub per_address: PerAddressLimits,
    /// Time a new connection has to allocate, claim or rejoin, whatever else it sends.
    pub fresh_deadline: Duration,
    /// Time from a claim until both sides must have relayed their SPAKE2 message and
    /// confirmation tag; a claimer that has not is dropped and the nameplate burned.
    pub pake_deadline: Duration,
    /// STUN handed to every paired client; TURN once its pair did the key exchange.
    pub ice: IceHandout,
    /// How long a pair may stay paired, and what each side may relay in that time.
    pub pair_lifetime: Duration,
    pub relay_budget: RelayBudget,
    /// Claims of missing nameplates a minute, server-wide, while few codes are open
    /// (`pair::misses_per_minute` grows it with load).
    pub misses_per_minute: u32,
    /// Serve `wss://` with these certificate files; `None` serves `ws://`.
    pub tls: Option<Arc<ServerTls>>,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            slot_ttl: Duration::from_secs(600),
            max_slots: 10_000,
            max_connections: 1_000,
            per_address: PerAddressLimits::default(),
            fresh_deadline: Duration::from_secs(10),
            pake_deadline: Duration::from_secs(5),
            ice: IceHandout::default(),
            pair_lifetime: PAIR_LIFETIME,
            relay_budget: RelayBudget::default(),
            misses_per_minute: 6,
            tls: None,
        }
    }
}

/// What a claimer hands the connection it pairs with.
struct Handoff {
    peer: mpsc::Sender<ServerMessage>,
    pair: Arc<PairState>,
    /// A nameplate pair, whose claimer answers for the key exchange (not a rejoin).
    watched: bool,
}

enum Slot {
    /// The allocator waits; the claimer hands it its outbound queue through `handoff`.
    Waiting {
        allocator: mpsc::Sender<ServerMessage>,
        /// The allocator's admission id, so the claimer can mark it paired.
        id: u64,
        /// Its address, whose paired connections the claimer counts.
        ip: IpAddr,
        handoff: oneshot::Sender<Handoff>,
    },
    /// Two parties are talking; a third claim is "crowded".
    Paired,
    /// Claimed by someone who never completed the key exchange: burned, and every later
    /// claim until `until` is told so (then it is forgotten like any used nameplate).
    Abandoned { until: Instant },
}

/// One side of a job waiting on its rejoin channel.
struct Rejoiner {
    sender: bool,
    /// Its admission id, so the other side can mark it paired.
    id: u64,
    ip: IpAddr,
    waiting: mpsc::Sender<ServerMessage>,
    handoff: oneshot::Sender<Handoff>,
}

#[derive(Default)]
struct Slots {
    by_nameplate: HashMap<u32, Slot>,
    rejoin: HashMap<String, Rejoiner>,
}

type SharedSlots = Arc<Mutex<Slots>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock would be a bug in this module; the data stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves until `shutdown` fires, then waits for every connection task to end.
pub async fn serve(listener: TcpListener, config: RendezvousConfig, shutdown: CancellationToken) {
    let slots: SharedSlots = Arc::default();
    let admission = Arc::new(Mutex::new(Admission::new(config.max_connections)));
    let busy_answers = Arc::new(Semaphore::new(BUSY_ANSWERS));
    let addresses = Arc::new(Mutex::new(AddressTable::new(config.per_address)));
    let misses = Arc::new(Mutex::new(MissBudget::new(
        config.misses_per_minute,
        Instant::now(),
    )));
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, tls = config.tls.is_some(), "rendezvous listening");
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%error, "rendezvous accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let turn_away = |stream, why: &'static str| {
            debug!(%peer, why, "turning a connection away");
            // Told "busy" when there is room to say it, so its user hears "try again"
            // rather than "cannot reach the rendezvous".
            if let Ok(permit) = busy_answers.clone().try_acquire_owned() {
                let tls = config.tls.clone();
                tracker.spawn(async move {
                    let answer = async {
                        if let Some(mut ws) = websocket(stream, tls.as_deref()).await {
                            let _ = send(&mut ws, &error(ServerErrorKind::Busy, why)).await;
                            close_gracefully(ws).await;
                        }
                    };
                    let _ = tokio::time::timeout(BUSY_ANSWER_TIME, answer).await;
                    drop(permit);
                });
            }
        };
        if !lock(&addresses).connect(peer.ip(), Instant::now()) {
            turn_away(stream, "too many connections from your address");
            continue;
        }
        let evict = CancellationToken::new();
        let id = match lock(&admission).admit(evict.clone()) {
            Admit::In { id, evicted } => {
                if let Some(evicted) = evicted {
                    evicted.cancel();
                }
                id
            }
            Admit::Full => {
                lock(&addresses).disconnect(peer.ip());
                turn_away(stream, "the rendezvous is full");
                continue;
            }
        };
        let conn = Connection {
            slots: slots.clone(),
            config: config.clone(),
            shutdown: shutdown.clone(),
            addresses: addresses.clone(),
            misses: misses.clone(),
            admission: admission.clone(),
            id,
            evict,
            ip: peer.ip(),
        };
        tracker.spawn(
            async move {
                // Evicted mid-handshake, it goes at once rather than at the handshake timeout.
                let ws = tokio::select! {
                    ws = websocket(stream, conn.config.tls.as_deref()) => ws,
                    _ = conn.evict.cancelled() => None,
                };
                if let Some(ws) = ws {
                    conn.run(ws).await;
                }
                lock(&conn.admission).leave(conn.id);
                lock(&conn.addresses).disconnect(conn.ip);
            }
            .instrument(tracing::info_span!("rendezvous_conn", %peer)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// Either transport under the WebSocket; the rest of the server does not care which.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

type Ws = WebSocketStream<Box<dyn Transport>>;

/// TLS (when configured) and the WebSocket handshake, within [`HANDSHAKE_TIMEOUT`]; a
/// request for the browser page is answered here instead, and gets `None`.
async fn websocket(stream: TcpStream, tls: Option<&ServerTls>) -> Option<Ws> {
    let handshakes = async {
        let transport: Box<dyn Transport> = match tls {
            Some(tls) => match tls.acceptor().accept(stream).await {
                Ok(stream) => Box::new(stream),
                Err(error) => {
                    debug!(%error, "TLS handshake failed");
                    return None;
                }
            },
            None => Box::new(stream),
        };
        // The same address serves the browser page: only an upgrade goes on.
        let mut transport = transport;
        let (read, end) = super::page::read_head(&mut transport).await?;
        match super::page::parse_head(&read[..end]) {
            super::page::Head::WebSocket => {}
            other => {
                let scheme = match tls {
                    Some(_) => super::page::Scheme::Https,
                    None => super::page::Scheme::Http,
                };
                super::page::serve(&mut transport, &other, scheme).await;
                return None;
            }
        }
        let transport: Box<dyn Transport> = Box::new(super::page::Rewound::new(read, transport));
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES))
            .read_buffer_size(READ_BUFFER_BYTES);
        match tokio_tungstenite::accept_async_with_config(transport, Some(ws_config)).await {
            Ok(ws) => Some(ws),
            Err(error) => {
                debug!(%error, "websocket handshake failed");
                None
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshakes).await {
        Ok(ws) => ws,
        Err(_) => {
            debug!("handshake timed out");
            None
        }
    }
}

/// Closes after a final answer without losing it: the client may still be sending its
/// request, and closing a socket with unread data makes the kernel reset it, which can
/// destroy the answer before the client reads it.
async fn close_gracefully(mut ws: Ws) {
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = ws.next().await {}
}

struct Connection {
    slots: SharedSlots,
    config: RendezvousConfig,
    shutdown: CancellationToken,
    addresses: Arc<Mutex<AddressTable>>,
    misses: Arc<Mutex<MissBudget>>,
    admission: Arc<Mutex<Admission<CancellationToken>>>,
    id: u64,
    /// Cancelled when a newcomer needs this connection's place.
    evict: CancellationToken,
    ip: IpAddr,
}

/// The claimer's watch over a fresh nameplate pair's key exchange.
struct PakeWatch {
    /// Only the claimer's connection acts on the deadline (it claimed; it answers for it).
    deadline: Option<tokio::time::Instant>,
}

/// This connection's side of a pair.
struct Side {
    pair: Arc<PairState>,
    /// 0 for the side that waited (allocator, first rejoiner), 1 for the one that came.
    index: usize,
    /// Ends the pair however busy it is.
    until: tokio::time::Instant,
    /// What this side may still relay.
    budget: RelayBudget,
}

/// What this connection is doing in the pairing dance.
enum Phase {
    Fresh,
    Waiting {
        nameplate: u32,
        handoff: oneshot::Receiver<Handoff>,
        deadline: tokio::time::Instant,
    },
    Rejoining {
        channel: String,
        handoff: oneshot::Receiver<Handoff>,
        deadline: tokio::time::Instant,
    },
    Paired {
        /// None for a pair met on a rejoin channel.
        nameplate: Option<u32>,
        peer: mpsc::Sender<ServerMessage>,
        side: Side,
        /// Until the key exchange is complete, for a nameplate pair.
        pake: Option<PakeWatch>,
    },
}

impl Phase {
    /// The claimer's key-exchange deadline; nobody else has one.
    fn pake_deadline(&self) -> Option<tokio::time::Instant> {
        match self {
            Phase::Paired {
                pake: Some(watch), ..
            } => watch.deadline,
            _ => None,
        }
    }
}

impl Connection {
    async fn run(&self, ws: Ws) {
        let (mut sink, mut source) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(OUTBOUND_QUEUE);
        let mut phase = Phase::Fresh;
        // Fixed at connect: pings or junk do not extend it.
        let fresh_until = tokio::time::Instant::now() + self.config.fresh_deadline;
        let mut idle_until = tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT;

        loop {
            let until = match &phase {
                Phase::Fresh => fresh_until,
                Phase::Waiting { deadline, .. } | Phase::Rejoining { deadline, .. } => *deadline,
                Phase::Paired { side, .. } => idle_until.min(side.until),
            };
            let pake_at = phase.pake_deadline();
            let reply: Option<ServerMessage> = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.evict.cancelled() => {
                    let _ = send(&mut sink, &error(ServerErrorKind::Busy, "the rendezvous is full and this connection waited longest")).await;
                    break;
                }
                _ = tokio::time::sleep_until(until) => {
                    match phase {
                        Phase::Fresh => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "nothing asked for in time")).await;
                        }
                        Phase::Waiting { .. } | Phase::Rejoining { .. } => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Expired, "nobody used the code in time")).await;
                        }
                        Phase::Paired { ref side, .. } if tokio::time::Instant::now() >= side.until => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "this pair outlived the rendezvous's time for signaling")).await;
                        }
                        Phase::Paired { .. } => {}
                    }
                    break;
                }
                _ = sleep_until_some(pake_at) => match self.pake_verdict(&mut phase) {
                    Some(reply) => {
                        let _ = send(&mut sink, &reply).await;
                        break;
                    }
                    None => None,
                },
                handed = wait_handoff(&mut phase) => {
                    // A dropped handoff means the slot is gone; a completed oneshot must
                    // never be polled again, so leave either way unless we paired.
                    match (&phase, handed) {
                        (Phase::Waiting { nameplate, .. }, Some(handoff)) => {
                            phase = Phase::Paired {
                                nameplate: Some(*nameplate),
                                peer: handoff.peer,
                                side: self.side(handoff.pair, 0),
                                pake: handoff.watched.then_some(PakeWatch { deadline: None }),
                            };
                        }
                        (Phase::Rejoining { .. }, Some(handoff)) => {
                            phase = Phase::Paired { nameplate: None, peer: handoff.peer, side: self.side(handoff.pair, 0), pake: None };
                        }
                        _ => break,
                    }
                    idle_until = tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT;
                    None
                }
                outbound = out_rx.recv() => {
                    // `out_tx` lives in this scope, so the queue never closes here.
                    let Some(message) = outbound else { break };
                    let ends = matches!(message, ServerMessage::PeerGone | ServerMessage::Error { .. });
                    if send(&mut sink, &message).await.is_err() || ends {
                        break;
                    }
                    idle_until = tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT;
                    None
                }
                incoming = source.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        // Answered by tungstenite; they keep nothing alive here.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(_))) => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "binary messages are not allowed")).await;
                            break;
                        }
                        _ => break,
                    };
                    idle_until = tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT;
                    match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(message) => match self.handle(message, &mut phase, &out_tx).await {
                            Step::Reply(reply) => Some(reply),
                            Step::Quiet => None,
                            Step::End(reply) => {
                                if let Some(reply) = reply {
                                    let _ = send(&mut sink, &reply).await;
                                }
                                break;
                            }
                        },
                        Err(_) => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "message not understood")).await;
                            break;
                        }
                    }
                }
            };
            if let Some(reply) = reply
                && send(&mut sink, &reply).await.is_err()
            {
                break;
            }
        }
        self.leave(phase, &out_tx);
        let _ = sink.close().await;
    }

    /// The claimer's key-exchange deadline has passed: `None` if the exchange completed
    /// (the watch ends), else the answer to end this connection with. A claimer that did
    /// not send its SPAKE2 message and tag burns the nameplate for everyone; one whose
    /// allocator went silent just loses its peer.
    fn pake_verdict(&self, phase: &mut Phase) -> Option<ServerMessage> {
        let Phase::Paired {
            nameplate,
            peer,
            side,
            pake,
        } = phase
        else {
            return None;
        };
        pake.take()?;
        if side.pair.exchanged() {
            return None;
        }
        if side.pair.done(1) {
            return Some(ServerMessage::PeerGone);
        }
        self.abandon(nameplate.take(), peer);
        Some(error(ServerErrorKind::Abandoned, ABANDONED))
    }

    /// Burns `nameplate` into a tombstone and tells the allocator why. Only while the pair
    /// holds it: once the allocator has left, the code is gone anyway.
    fn abandon(&self, nameplate: Option<u32>, allocator: &mpsc::Sender<ServerMessage>) {
        if let Some(nameplate) = nameplate {
            let mut slots = lock(&self.slots);
            if let Some(slot @ Slot::Paired) = slots.by_nameplate.get_mut(&nameplate) {
                let until = Instant::now() + self.config.slot_ttl;
                *slot = Slot::Abandoned { until };
                debug!(nameplate, "claim abandoned; nameplate burned");
            }
        }
        let _ = allocator.try_send(error(ServerErrorKind::Abandoned, ABANDONED));
    }

    async fn handle(
        &self,
        message: ClientMessage,
        phase: &mut Phase,
        out_tx: &mpsc::Sender<ServerMessage>,
    ) -> Step {
        let rate_limited = matches!(phase, Phase::Fresh)
            && matches!(
                message,
                ClientMessage::Allocate
                    | ClientMessage::Claim { .. }
                    | ClientMessage::Rejoin { .. }
            )
            && !self.allowed(&message);
        match (message, &mut *phase) {
            (
                ClientMessage::Allocate
                | ClientMessage::Claim { .. }
                | ClientMessage::Rejoin { .. },
                Phase::Fresh,
            ) if rate_limited => Step::End(Some(error(
                ServerErrorKind::Busy,
                "too many requests from your address, try again in a minute",
            ))),
            (ClientMessage::Allocate, Phase::Fresh) => {
                let (handoff_tx, handoff_rx) = oneshot::channel();
                let nameplate = {
                    let mut slots = lock(&self.slots);
                    if slots.by_nameplate.len() >= self.config.max_slots {
                        forget_expired_tombstones(&mut slots);
                    }
                    if slots.by_nameplate.len() >= self.config.max_slots {
                        return Step::End(Some(error(
                            ServerErrorKind::Busy,
                            "too many open codes, try again later",
                        )));
                    }
                    let nameplate = free_nameplate(&slots);
                    slots.by_nameplate.insert(
                        nameplate,
                        Slot::Waiting {
                            allocator: out_tx.clone(),
                            id: self.id,
                            ip: self.ip,
                            handoff: handoff_tx,
                        },
                    );
                    nameplate
                };
                self.stand(&[self.id], Standing::Waiting);
                debug!(nameplate, "allocated");
                *phase = Phase::Waiting {
                    nameplate,
                    handoff: handoff_rx,
                    deadline: tokio::time::Instant::now() + self.config.slot_ttl,
                };
                Step::Reply(ServerMessage::Allocated {
                    nameplate,
                    expires_in_secs: self.config.slot_ttl.as_secs(),
                })
            }
            (ClientMessage::Claim { nameplate }, Phase::Fresh) => {
                let taken = {
                    let mut slots = lock(&self.slots);
                    let open = slots.by_nameplate.len();
                    let misses = misses_per_minute(self.config.misses_per_minute, open);
                    // Spent: a sweep is on. The addresses sweeping wait, so it cannot go
                    // on finding codes; another address still gets its look.
                    let now = Instant::now();
                    let missed_lately = lock(&self.addresses).missed_lately(self.ip, now);
                    if !lock(&self.misses).open(misses, missed_lately, now) {
                        return Step::End(Some(error(
                            ServerErrorKind::Busy,
                            "too many claims of codes that do not exist, try again in a minute",
                        )));
                    }
                    match slots.by_nameplate.remove(&nameplate) {
                        Some(Slot::Waiting {
                            allocator,
                            id,
                            ip,
                            handoff,
                        }) => {
                            if lock(&self.addresses).pair(&[self.ip, ip]) {
                                slots.by_nameplate.insert(nameplate, Slot::Paired);
                                Ok((allocator, id, ip, handoff))
                            } else {
                                // The code stays for a later claim.
                                let waiting = Slot::Waiting {
                                    allocator,
                                    id,
                                    ip,
                                    handoff,
                                };
                                slots.by_nameplate.insert(nameplate, waiting);
                                Err(error(ServerErrorKind::Busy, TOO_MANY_PAIRS))
                            }
                        }
                        Some(Slot::Paired) => {
                            slots.by_nameplate.insert(nameplate, Slot::Paired);
                            Err(error(
                                ServerErrorKind::Crowded,
                                "that code is already in use by two parties",
                            ))
                        }
                        Some(Slot::Abandoned { until }) if Instant::now() < until => {
                            slots
                                .by_nameplate
                                .insert(nameplate, Slot::Abandoned { until });
                            Err(error(
                                ServerErrorKind::Abandoned,
                                "someone claimed that code without completing the key exchange",
                            ))
                        }
                        Some(Slot::Abandoned { .. }) | None => {
                            lock(&self.misses).missed(misses, now);
                            lock(&self.addresses).note_miss(self.ip, now);
                            Err(error(
                                ServerErrorKind::UnknownNameplate,
                                "no transfer is waiting with that code",
                            ))
                        }
                    }
                };
                match taken {
                    Ok((allocator, allocator_id, allocator_ip, handoff)) => {
                        // Before either side hears "paired", so a newcomer arriving then
                        // cannot evict half of a pair.
                        self.stand(&[self.id, allocator_id], Standing::Paired);
                        let pair = new_pair();
                        let handed = Handoff {
                            peer: out_tx.clone(),
                            pair: pair.clone(),
                            watched: true,
                        };
                        if handoff.send(handed).is_err() {
                            // The allocator left before it could count itself paired.
                            self.unpair(&[self.ip, allocator_ip]);
                            lock(&self.slots).by_nameplate.remove(&nameplate);
                            return Step::End(Some(ServerMessage::PeerGone));
                        }
                        if allocator.send(self.paired()).await.is_err() {
                            // It holds the handoff: its own leaving uncounts it.
                            self.unpair(&[self.ip]);
                            lock(&self.slots).by_nameplate.remove(&nameplate);
                            return Step::End(Some(ServerMessage::PeerGone));
                        }
                        debug!(nameplate, "paired");
                        *phase = Phase::Paired {
                            nameplate: Some(nameplate),
                            peer: allocator,
                            side: self.side(pair, 1),
                            pake: Some(PakeWatch {
                                deadline: Some(
                                    tokio::time::Instant::now() + self.config.pake_deadline,
                                ),
                            }),
                        };
                        Step::Reply(self.paired())
                    }
                    Err(reply) => Step::End(Some(reply)),
                }
            }
            (ClientMessage::Rejoin { channel, sender }, Phase::Fresh) => {
                let well_formed =
                    channel.len() == 64 && channel.bytes().all(|b| b.is_ascii_hexdigit());
                if !well_formed {
                    return Step::End(Some(error(ServerErrorKind::Protocol, "bad rejoin channel")));
                }
                let (handoff_tx, handoff_rx) = oneshot::channel();
                let other = {
                    let mut slots = lock(&self.slots);
                    let other = match slots.rejoin.remove(&channel) {
                        Some(other) if other.sender != sender => {
                            if !lock(&self.addresses).pair(&[self.ip, other.ip]) {
                                slots.rejoin.insert(channel, other);
                                return Step::End(Some(error(
                                    ServerErrorKind::Busy,
                                    TOO_MANY_PAIRS,
                                )));
                            }
                            Some(other)
                        }
                        Some(stale) => {
                            // Our own side again (it lost its connection): the newer wins.
                            let _ = stale.waiting.try_send(error(
                                ServerErrorKind::Crowded,
                                "replaced by a newer connection",
                            ));
                            None
                        }
                        None => None,
                    };
                    if other.is_none() {
                        if slots.rejoin.len() >= self.config.max_slots {
                            return Step::End(Some(error(
                                ServerErrorKind::Busy,
                                "too many waiting jobs, try again later",
                            )));
                        }
                        slots.rejoin.insert(
                            channel.clone(),
                            Rejoiner {
                                sender,
                                id: self.id,
                                ip: self.ip,
                                waiting: out_tx.clone(),
                                handoff: handoff_tx,
                            },
                        );
                    }
                    other
                };
                match other {
                    Some(other) => {
                        self.stand(&[self.id, other.id], Standing::Paired);
                        let pair = new_pair();
                        let handed = Handoff {
                            peer: out_tx.clone(),
                            pair: pair.clone(),
                            watched: false,
                        };
                        if other.handoff.send(handed).is_err() {
                            self.unpair(&[self.ip, other.ip]);
                            return Step::End(Some(ServerMessage::PeerGone));
                        }
                        if other.waiting.send(self.paired()).await.is_err() {
                            self.unpair(&[self.ip]);
                            return Step::End(Some(ServerMessage::PeerGone));
                        }
                        debug!("rejoined");
                        *phase = Phase::Paired {
                            nameplate: None,
                            peer: other.waiting,
                            side: self.side(pair, 1),
                            pake: None,
                        };
                        Step::Reply(self.paired())
                    }
                    None => {
                        self.stand(&[self.id], Standing::Waiting);
                        *phase = Phase::Rejoining {
                            channel,
                            handoff: handoff_rx,
                            deadline: tokio::time::Instant::now() + self.config.slot_ttl,
                        };
                        Step::Quiet
                    }
                }
            }
            (ClientMessage::Relay { body }, Phase::Paired { peer, side, .. }) => {
                // Refused here, to its sender, so one bad message costs the pair nothing;
                // forwarded, it would fail the peer's decoder and end the pairing.
                if BASE64.decode(&body).is_err() {
                    return Step::Reply(error(
                        ServerErrorKind::Protocol,
                        "relay body is not base64; it was not forwarded",
                    ));
                }
                if !side.budget.spend(body.len()) {
                    debug!("a pair passed its relay budget");
                    return Step::End(Some(error(
                        ServerErrorKind::Protocol,
                        "this pair passed the rendezvous's signaling budget: it carries signaling, not data",
                    )));
                }
                side.pair.count(side.index);
                if peer.send(ServerMessage::Relay { body }).await.is_err() {
                    return Step::End(Some(ServerMessage::PeerGone));
                }
                Step::Quiet
            }
            (ClientMessage::Burn, Phase::Paired { peer, pake, .. }) => {
                // A wrong code, not an abandoned claim: the nameplate is simply freed.
                *pake = None;
                let _ = peer.try_send(error(
                    ServerErrorKind::Burned,
                    "the other side had a different code",
                ));
                Step::End(None)
            }
            (ClientMessage::Burn, Phase::Waiting { .. } | Phase::Rejoining { .. }) => {
                Step::End(None)
            }
            // TURN only for a pair whose both sides relayed their key exchange: not a
            // bare claim of one's own nameplate or two rejoins on a made-up channel.
            // The server cannot read the exchange, so a self-made pair that relays four
            // blobs still gets credentials: they are per pair, minutes long, and each
            // costs an allocation or a claim from the address's budget.
            (ClientMessage::Ice, Phase::Paired { side, .. }) => {
                let ice_servers = if side.pair.exchanged() {
                    self.config.ice.for_pair(unix_now(), &side.pair.turn_user)
                } else {
                    self.config.ice.stun_only()
                };
                Step::Reply(ServerMessage::Ice { ice_servers })
            }
            _ => Step::End(Some(error(
                ServerErrorKind::Protocol,
                "message not allowed now",
            ))),
        }
    }

    /// Records how far these connections have got, for who gives way when full.
    fn stand(&self, ids: &[u64], standing: Standing) {
        let mut admission = lock(&self.admission);
        for id in ids {
            admission.set(*id, standing);
        }
    }

    /// "Paired", with STUN: TURN comes on asking, after the key exchange.
    fn paired(&self) -> ServerMessage {
        ServerMessage::Paired {
            ice_servers: self.config.ice.stun_only(),
        }
    }

    /// This connection's side of a new pair.
    fn side(&self, pair: Arc<PairState>, index: usize) -> Side {
        Side {
            pair,
            index,
            until: tokio::time::Instant::now() + self.config.pair_lifetime,
            budget: self.config.relay_budget,
        }
    }

    fn unpair(&self, ips: &[IpAddr]) {
        let mut addresses = lock(&self.addresses);
        for ip in ips {
            addresses.unpair(*ip);
        }
    }

    fn allowed(&self, message: &ClientMessage) -> bool {
        let action = match message {
            ClientMessage::Claim { .. } | ClientMessage::Rejoin { .. } => Action::Claim,
            _ => Action::Allocate,
        };
        lock(&self.addresses).allow(self.ip, action, Instant::now())
    }

    /// Frees this connection's slot and tells a paired peer we left.
    fn leave(&self, phase: Phase, out_tx: &mpsc::Sender<ServerMessage>) {
        // Paired as it left, before it saw the handoff: it counts, and its peer hears.
        let handed = |handoff: oneshot::Receiver<Handoff>| {
            let mut handoff = handoff;
            if let Ok(handed) = handoff.try_recv() {
                self.unpair(&[self.ip]);
                let _ = handed.peer.try_send(ServerMessage::PeerGone);
            }
        };
        match phase {
            Phase::Fresh => {}
            Phase::Waiting {
                nameplate, handoff, ..
            } => {
                lock(&self.slots).by_nameplate.remove(&nameplate);
                handed(handoff);
            }
            Phase::Rejoining {
                channel, handoff, ..
            } => {
                handed(handoff);
                let mut slots = lock(&self.slots);
                // Only our own entry: a newer connection of our side may have replaced it.
                if slots
                    .rejoin
                    .get(&channel)
                    .is_some_and(|r| r.waiting.same_channel(out_tx))
                {
                    slots.rejoin.remove(&channel);
                }
            }
            // A claimer that leaves before its part of the key exchange abandons the code,
            // exactly as one that stays silent does.
            Phase::Paired {
                nameplate,
                peer,
                side,
                pake: Some(_),
            } if side.index == 1 && !side.pair.done(1) => {
                self.unpair(&[self.ip]);
                self.abandon(nameplate, &peer);
            }
            Phase::Paired {
                nameplate, peer, ..
            } => {
                self.unpair(&[self.ip]);
                if let Some(nameplate) = nameplate {
                    // A burned nameplate's tombstone stays until it expires.
                    let mut slots = lock(&self.slots);
                    if matches!(slots.by_nameplate.get(&nameplate), Some(Slot::Paired)) {
                        slots.by_nameplate.remove(&nameplate);
                    }
                }
                let _ = peer.try_send(ServerMessage::PeerGone);
            }
        }
    }
}

enum Step {
    Reply(ServerMessage),
    Quiet,
    End(Option<ServerMessage>),
}

async fn wait_handoff(phase: &mut Phase) -> Option<Handoff> {
    match phase {
        Phase::Waiting { handoff, .. } | Phase::Rejoining { handoff, .. } => handoff.await.ok(),
        _ => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a pair at its address's cap hears.
const TOO_MANY_PAIRS: &str =
    "too many transfers in progress from one address, try again in a minute";

fn new_pair() -> Arc<PairState> {
    let mut name = [0u8; 8];
    rand::thread_rng().fill(&mut name);
    Arc::new(PairState::new(hex::encode(name)))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn forget_expired_tombstones(slots: &mut Slots) {
    let now = Instant::now();
    slots
        .by_nameplate
        .retain(|_, slot| !matches!(slot, Slot::Abandoned { until } if *until <= now));
}

fn error(kind: ServerErrorKind, message: &str) -> ServerMessage {
    ServerMessage::Error {
        kind,
        message: message.to_owned(),
    }
}

/// Random within a space a thousand times larger than the open nameplates
/// (`pair::nameplate_space`), never the lowest free: a sweep of small numbers finds
/// nothing, and a stale code rarely lands on someone else's new slot.
fn free_nameplate(slots: &Slots) -> u32 {
    let mut rng = rand::thread_rng();
    let mut upper = nameplate_space(slots.by_nameplate.len());
    loop {
        // At most one in a thousand is taken: a free one comes at the first draw or so.
        for _ in 0..32 {
            let candidate = rng.gen_range(1..upper);
            if !slots.by_nameplate.contains_key(&candidate) {
                return candidate;
            }
        }
        upper = upper.saturating_mul(10);
    }
}

async fn send<S>(sink: &mut S, message: &ServerMessage) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let json = serde_json::to_string(message).map_err(|_| ())?;
    sink.send(Message::text(json)).await.map_err(|_| ())
}

/// Binds `addr` and serves on it; used by `p2pd rendezvous` and the embedded server.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
