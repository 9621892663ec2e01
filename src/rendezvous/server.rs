//! The rendezvous server: pairs two daemons by nameplate and forwards opaque blobs.
//!
//! It never sees a code's words, file names, addresses or SDP: after pairing it only moves
//! sealed bytes. Every connection, slot and message is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::ice::IceHandout;
use super::limits::{Action, AddressTable, PerAddressLimits};
use super::messages::{ClientMessage, ServerErrorKind, ServerMessage};

/// Largest WebSocket message accepted; SDPs and candidates are far smaller.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Time a client gets to finish the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a paired connection may stay silent before it is dropped.
const PAIRED_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages queued toward one connection before its sender waits.
const OUTBOUND_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// How long an allocated nameplate waits for its peer.
    pub slot_ttl: Duration,
    pub max_slots: usize,
    pub max_connections: usize,
    pub per_address: PerAddressLimits,
    /// STUN/TURN handed to every paired client.
    pub ice: IceHandout,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            slot_ttl: Duration::from_secs(600),
            max_slots: 10_000,
            max_connections: 1_000,
            per_address: PerAddressLimits::default(),
            ice: IceHandout::default(),
        }
    }
}

enum Slot {
    /// The allocator waits; the claimer hands it its outbound queue through `handoff`.
    Waiting {
        allocator: mpsc::Sender<ServerMessage>,
        handoff: oneshot::Sender<mpsc::Sender<ServerMessage>>,
    },
    /// Two parties are talking; a third claim is "crowded".
    Paired,
}

/// One side of a job waiting on its rejoin channel.
struct Rejoiner {
    sender: bool,
    waiting: mpsc::Sender<ServerMessage>,
    handoff: oneshot::Sender<mpsc::Sender<ServerMessage>>,
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
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let addresses = Arc::new(Mutex::new(AddressTable::new(config.per_address)));
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "rendezvous listening");
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "rendezvous full, dropping connection");
            continue;
        };
        if !lock(&addresses).connect(peer.ip(), Instant::now()) {
            debug!(%peer, "too many connections from this address");
            continue;
        }
        let conn = Connection {
            slots: slots.clone(),
            config: config.clone(),
            shutdown: shutdown.clone(),
            addresses: addresses.clone(),
            ip: peer.ip(),
        };
        tracker.spawn(
            async move {
                conn.run(stream).await;
                lock(&conn.addresses).disconnect(conn.ip);
                drop(permit);
            }
            .instrument(tracing::info_span!("rendezvous_conn", %peer)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

struct Connection {
    slots: SharedSlots,
    config: RendezvousConfig,
    shutdown: CancellationToken,
    addresses: Arc<Mutex<AddressTable>>,
    ip: IpAddr,
}

/// What this connection is doing in the pairing dance.
enum Phase {
    Fresh,
    Waiting {
        nameplate: u32,
        handoff: oneshot::Receiver<mpsc::Sender<ServerMessage>>,
        deadline: tokio::time::Instant,
    },
    Rejoining {
        channel: String,
        handoff: oneshot::Receiver<mpsc::Sender<ServerMessage>>,
        deadline: tokio::time::Instant,
    },
    Paired {
        /// None for a pair met on a rejoin channel.
        nameplate: Option<u32>,
        peer: mpsc::Sender<ServerMessage>,
    },
}

impl Connection {
    async fn run(&self, stream: TcpStream) {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let accept = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config));
        let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => return debug!(%error, "websocket handshake failed"),
            Err(_) => return debug!("websocket handshake timed out"),
        };
        let (mut sink, mut source) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(OUTBOUND_QUEUE);
        let mut phase = Phase::Fresh;

        loop {
            let idle = match &phase {
                Phase::Waiting { deadline, .. } | Phase::Rejoining { deadline, .. } => *deadline,
                _ => tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT,
            };
            let reply: Option<ServerMessage> = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(idle) => {
                    if let Phase::Waiting { .. } | Phase::Rejoining { .. } = phase {
                        let _ = send(&mut sink, &error(ServerErrorKind::Expired, "nobody used the code in time")).await;
                    }
                    break;
                }
                handed = wait_handoff(&mut phase) => {
                    // A dropped handoff means the slot is gone; a completed oneshot must
                    // never be polled again, so leave either way unless we paired.
                    match (&phase, handed) {
                        (Phase::Waiting { nameplate, .. }, Some(peer)) => {
                            phase = Phase::Paired { nameplate: Some(*nameplate), peer };
                        }
                        (Phase::Rejoining { .. }, Some(peer)) => {
                            phase = Phase::Paired { nameplate: None, peer };
                        }
                        _ => break,
                    }
                    None
                }
                outbound = out_rx.recv() => {
                    // `out_tx` lives in this scope, so the queue never closes here.
                    let Some(message) = outbound else { break };
                    let ends = matches!(message, ServerMessage::PeerGone | ServerMessage::Error { .. });
                    if send(&mut sink, &message).await.is_err() || ends {
                        break;
                    }
                    None
                }
                incoming = source.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(_))) => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "binary messages are not allowed")).await;
                            break;
                        }
                        _ => break,
                    };
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
                            handoff: handoff_tx,
                        },
                    );
                    nameplate
                };
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
                    match slots.by_nameplate.remove(&nameplate) {
                        Some(Slot::Waiting { allocator, handoff }) => {
                            slots.by_nameplate.insert(nameplate, Slot::Paired);
                            Ok((allocator, handoff))
                        }
                        Some(Slot::Paired) => {
                            slots.by_nameplate.insert(nameplate, Slot::Paired);
                            Err(error(
                                ServerErrorKind::Crowded,
                                "that code is already in use by two parties",
                            ))
                        }
                        None => Err(error(
                            ServerErrorKind::UnknownNameplate,
                            "no transfer is waiting with that code",
                        )),
                    }
                };
                match taken {
                    Ok((allocator, handoff)) => {
                        if handoff.send(out_tx.clone()).is_err()
                            || allocator.send(self.paired()).await.is_err()
                        {
                            lock(&self.slots).by_nameplate.remove(&nameplate);
                            return Step::End(Some(ServerMessage::PeerGone));
                        }
                        debug!(nameplate, "paired");
                        *phase = Phase::Paired {
                            nameplate: Some(nameplate),
                            peer: allocator,
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
                        Some(other) if other.sender != sender => Some(other),
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
                                waiting: out_tx.clone(),
                                handoff: handoff_tx,
                            },
                        );
                    }
                    other
                };
                match other {
                    Some(other) => {
                        if other.handoff.send(out_tx.clone()).is_err()
                            || other.waiting.send(self.paired()).await.is_err()
                        {
                            return Step::End(Some(ServerMessage::PeerGone));
                        }
                        debug!("rejoined");
                        *phase = Phase::Paired {
                            nameplate: None,
                            peer: other.waiting,
                        };
                        Step::Reply(self.paired())
                    }
                    None => {
                        *phase = Phase::Rejoining {
                            channel,
                            handoff: handoff_rx,
                            deadline: tokio::time::Instant::now() + self.config.slot_ttl,
                        };
                        Step::Quiet
                    }
                }
            }
            (ClientMessage::Relay { body }, Phase::Paired { peer, .. }) => {
                if peer.send(ServerMessage::Relay { body }).await.is_err() {
                    return Step::End(Some(ServerMessage::PeerGone));
                }
                Step::Quiet
            }
            (ClientMessage::Burn, Phase::Paired { peer, .. }) => {
                let _ = peer.try_send(error(
                    ServerErrorKind::Burned,
                    "the other side had a different code",
                ));
                Step::End(None)
            }
            (ClientMessage::Burn, Phase::Waiting { .. } | Phase::Rejoining { .. }) => {
                Step::End(None)
            }
            _ => Step::End(Some(error(
                ServerErrorKind::Protocol,
                "message not allowed now",
            ))),
        }
    }

    /// "Paired", with this client's ICE servers and fresh TURN credentials.
    fn paired(&self) -> ServerMessage {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ServerMessage::Paired {
            ice_servers: self.config.ice.for_client(now),
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
        match phase {
            Phase::Fresh => {}
            Phase::Waiting { nameplate, .. } => {
                lock(&self.slots).by_nameplate.remove(&nameplate);
            }
            Phase::Rejoining { channel, .. } => {
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
            Phase::Paired { nameplate, peer } => {
                if let Some(nameplate) = nameplate {
                    lock(&self.slots).by_nameplate.remove(&nameplate);
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

async fn wait_handoff(phase: &mut Phase) -> Option<mpsc::Sender<ServerMessage>> {
    match phase {
        Phase::Waiting { handoff, .. } | Phase::Rejoining { handoff, .. } => handoff.await.ok(),
        _ => std::future::pending().await,
    }
}

fn error(kind: ServerErrorKind, message: &str) -> ServerMessage {
    ServerMessage::Error {
        kind,
        message: message.to_owned(),
    }
}

/// Small numbers are easier to read aloud; widen the range only as it fills. Random within
/// the range so a stale code rarely lands on someone else's new slot.
fn free_nameplate(slots: &Slots) -> u32 {
    let mut rng = rand::thread_rng();
    let mut upper = 100u32;
    loop {
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
