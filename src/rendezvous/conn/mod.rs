//! One rendezvous connection: what it asked for, whom it is paired with, and every
//! deadline. Slots live in the [`Store`]; the other side of a pair is a [`ConnRef`] that
//! events are delivered to, on this instance or another. Each side counts what it relayed
//! and what its peer relayed to it, which is all the key-exchange watch and the TURN
//! handout need.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::debug;

mod pairing;

use crate::rendezvous::admission::{Admission, Standing};
use crate::rendezvous::bus::{ConnRef, Delivery, Event, lock};
use crate::rendezvous::limits::{Action, AddressTable, MissBudget};
use crate::rendezvous::messages::{ClientMessage, ReclaimToken, ServerErrorKind, ServerMessage};
use crate::rendezvous::pair::{EXCHANGE_RELAYS, RelayBudget};
use crate::rendezvous::server::{PAIRED_IDLE_TIMEOUT, RendezvousConfig, Ws};
use crate::rendezvous::slots::{BurnReason, Holder, ReclaimHash, Waiter, reclaim_token};
use crate::rendezvous::store::Store;

/// What both sides hear when a claimer did not complete the key exchange.
const ABANDONED: &str = "the code was claimed but the key exchange was not completed";

/// What a pair at its address's cap hears.
const TOO_MANY_PAIRS: &str =
    "too many transfers in progress from one address, try again in a minute";

/// What every connection of one instance shares.
pub(super) struct Shared {
    pub config: RendezvousConfig,
    pub store: Arc<dyn Store>,
    pub shutdown: CancellationToken,
    pub addresses: Mutex<AddressTable>,
    pub misses: Mutex<MissBudget>,
    pub admission: Mutex<Admission<CancellationToken>>,
}

pub(super) struct Connection {
    pub shared: Arc<Shared>,
    /// Its admission id, and its id on the bus.
    pub id: u64,
    /// Cancelled when a newcomer needs this connection's place.
    pub evict: CancellationToken,
    pub ip: IpAddr,
}

/// This connection's side of a pair.
struct Side {
    /// Random per pair, chosen by the side that arrived: the user part of its TURN
    /// credentials.
    turn_user: String,
    /// Ends the pair however busy it is.
    until: tokio::time::Instant,
    /// What this side may still relay.
    budget: RelayBudget,
    /// Relays this side sent, and relays its peer sent it (both stop mattering at 2).
    sent: u8,
    received: u8,
}

impl Side {
    /// Both sides relayed their part of the key exchange.
    fn exchanged(&self) -> bool {
        self.sent >= EXCHANGE_RELAYS && self.received >= EXCHANGE_RELAYS
    }
}

/// What this connection is doing in the pairing dance.
enum Phase {
    Fresh,
    Waiting {
        nameplate: u32,
        /// Its holder's reclaim hash, kept to put the nameplate back with.
        reclaim: ReclaimHash,
        deadline: tokio::time::Instant,
    },
    Rejoining {
        channel: String,
        sender: bool,
        deadline: tokio::time::Instant,
    },
    /// Standing for a daemon's mailboxes: knocked when a sender waits on one.
    Watching {
        channels: Vec<String>,
        deadline: tokio::time::Instant,
    },
    Paired {
        /// None for a pair met on a rejoin channel.
        nameplate: Option<u32>,
        peer: ConnRef,
        side: Side,
        /// The claimer's key-exchange deadline (it claimed; it answers for it).
        pake: Option<tokio::time::Instant>,
    },
}

enum Step {
    Reply(ServerMessage),
    Quiet,
    End(Option<ServerMessage>),
}

impl Connection {
    fn me(&self) -> ConnRef {
        ConnRef {
            instance: self.shared.store.instance(),
            id: self.id,
        }
    }

    fn store(&self) -> &dyn Store {
        &*self.shared.store
    }

    fn config(&self) -> &RendezvousConfig {
        &self.shared.config
    }

    pub(super) async fn run(&self, ws: Ws) {
        let (mut sink, mut source) = ws.split();
        let mut inbox = self.store().register(self.id);
        let mut health = self.store().health();
        let mut phase = Phase::Fresh;
        // Fixed at connect: pings or junk do not extend it.
        let fresh_until = tokio::time::Instant::now() + self.config().fresh_deadline;
        let mut idle_until = tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT;
        // This instance is stopping (a restart, a deploy): a waiting nameplate then stays
        // for its allocator to reclaim on another instance, as when an instance dies.
        // A client that goes (Ctrl-C, a cancelled job) frees its nameplate.
        let mut stopping = false;

        loop {
            let until = match &phase {
                Phase::Fresh => fresh_until,
                Phase::Waiting { deadline, .. }
                | Phase::Rejoining { deadline, .. }
                | Phase::Watching { deadline, .. } => *deadline,
                Phase::Paired { side, .. } => idle_until.min(side.until),
            };
            let pake_at = match &phase {
                Phase::Paired { pake, .. } => *pake,
                _ => None,
            };
            let needs_store = self.needs_store(&phase);
            let reply: Option<ServerMessage> = tokio::select! {
                _ = self.shared.shutdown.cancelled() => {
                    stopping = true;
                    break;
                }
                _ = self.evict.cancelled() => {
                    let _ = send(&mut sink, &error(ServerErrorKind::Busy, "the rendezvous is full and this connection waited longest")).await;
                    break;
                }
                _ = tokio::time::sleep_until(until) => {
                    match phase {
                        Phase::Fresh => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "nothing asked for in time")).await;
                        }
                        Phase::Waiting { .. } | Phase::Rejoining { .. } | Phase::Watching { .. } => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Expired, "nobody used the code in time")).await;
                        }
                        Phase::Paired { ref side, .. } if tokio::time::Instant::now() >= side.until => {
                            let _ = send(&mut sink, &error(ServerErrorKind::Protocol, "this pair outlived the rendezvous's time for signaling")).await;
                        }
                        Phase::Paired { .. } => {}
                    }
                    break;
                }
                _ = sleep_until_some(pake_at) => match self.pake_verdict(&mut phase).await {
                    Some(reply) => {
                        let _ = send(&mut sink, &reply).await;
                        break;
                    }
                    None => None,
                },
                // A store that stops serving leaves whoever depends on it without news:
                // they are told at once rather than left to wait for nothing.
                changed = health.changed(), if needs_store => {
                    let down = health.borrow_and_update().clone();
                    match (changed, down) {
                        (Ok(()), Some(cause)) => {
                            let message = format!("the rendezvous lost its store ({cause}): try again in a moment");
                            let _ = send(&mut sink, &error(ServerErrorKind::Busy, &message)).await;
                            break;
                        }
                        _ => None,
                    }
                }
                delivered = inbox.recv() => {
                    // Registered until `leave`, so the inbox never closes here.
                    let Some(delivery) = delivered else { break };
                    idle_until = tokio::time::Instant::now() + PAIRED_IDLE_TIMEOUT;
                    match self.on_event(delivery, &mut phase).await {
                        Step::Reply(reply) => Some(reply),
                        Step::Quiet => None,
                        Step::End(reply) => {
                            if let Some(reply) = reply {
                                let _ = send(&mut sink, &reply).await;
                            }
                            break;
                        }
                    }
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
                        Ok(message) => match self.handle(message, &mut phase).await {
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
        self.leave(phase, &mut inbox, stopping).await;
        let _ = sink.close().await;
    }

    /// Whether this connection waits for news only the store can bring: a claim or a
    /// rejoin, or a peer on another instance.
    fn needs_store(&self, phase: &Phase) -> bool {
        match phase {
            Phase::Fresh => false,
            Phase::Waiting { .. } | Phase::Rejoining { .. } | Phase::Watching { .. } => true,
            Phase::Paired { peer, .. } => peer.instance != self.me().instance,
        }
    }

    /// What another connection told this one.
    async fn on_event(&self, delivery: Delivery, phase: &mut Phase) -> Step {
        let Delivery { from, event } = delivery;
        match (&mut *phase, event) {
            (
                Phase::Waiting {
                    nameplate, reclaim, ..
                },
                Event::Paired { turn_user, counted },
            ) => {
                let nameplate = *nameplate;
                if !self.count_paired(counted) {
                    let holder = Holder {
                        conn: self.me(),
                        ip: self.ip,
                        reclaim: *reclaim,
                    };
                    self.store().put_back(nameplate, holder, from).await;
                    self.refuse(from).await;
                    return Step::Quiet;
                }
                *phase = Phase::Paired {
                    nameplate: Some(nameplate),
                    peer: from,
                    side: self.side(turn_user),
                    pake: None,
                };
                Step::Reply(self.paired())
            }
            (
                Phase::Rejoining {
                    channel, sender, ..
                },
                Event::Paired { turn_user, counted },
            ) => {
                if !self.count_paired(counted) {
                    let waiter = Waiter {
                        sender: *sender,
                        conn: self.me(),
                        ip: self.ip,
                    };
                    self.store().put_back_rejoin(channel, waiter).await;
                    self.refuse(from).await;
                    return Step::Quiet;
                }
                *phase = Phase::Paired {
                    nameplate: None,
                    peer: from,
                    side: self.side(turn_user),
                    pake: None,
                };
                Step::Reply(self.paired())
            }
            // Replaced by a newer connection of our own side.
            (Phase::Watching { channels, .. }, Event::Knock { channel }) => {
                if channels.contains(&channel) {
                    Step::Reply(ServerMessage::Knock { channel })
                } else {
                    Step::Quiet
                }
            }
            (Phase::Rejoining { .. }, Event::Error { kind, message }) => {
                Step::End(Some(ServerMessage::Error { kind, message }))
            }
            (Phase::Paired { peer, side, .. }, event) if from == *peer => match event {
                Event::Relay { body } => {
                    side.received = side.received.saturating_add(1);
                    Step::Reply(ServerMessage::Relay { body })
                }
                Event::PeerGone => Step::End(Some(ServerMessage::PeerGone)),
                Event::Error { kind, message } => {
                    Step::End(Some(ServerMessage::Error { kind, message }))
                }
                Event::Refused { message } => {
                    // The nameplate waits for another claim: leave it alone.
                    self.unpair(&[self.ip]);
                    *phase = Phase::Fresh;
                    Step::End(Some(error(ServerErrorKind::Busy, &message)))
                }
                Event::Paired { .. } | Event::Knock { .. } => Step::Quiet,
            },
            // Late news for a pairing this connection is no longer in.
            _ => Step::Quiet,
        }
    }

    async fn handle(&self, message: ClientMessage, phase: &mut Phase) -> Step {
        let rate_limited = matches!(phase, Phase::Fresh)
            && matches!(
                message,
                ClientMessage::Allocate
                    | ClientMessage::Claim { .. }
                    | ClientMessage::Rejoin { .. }
                    | ClientMessage::Reclaim { .. }
                    | ClientMessage::Watch { .. }
            )
            && !self.allowed(&message);
        match (message, &mut *phase) {
            (
                ClientMessage::Allocate
                | ClientMessage::Claim { .. }
                | ClientMessage::Rejoin { .. }
                | ClientMessage::Reclaim { .. }
                | ClientMessage::Watch { .. },
                Phase::Fresh,
            ) if rate_limited => Step::End(Some(error(
                ServerErrorKind::Busy,
                "too many requests from your address, try again in a minute",
            ))),
            (ClientMessage::Allocate, Phase::Fresh) => {
                let (token, reclaim) = reclaim_token(&mut rand::thread_rng());
                let holder = Holder {
                    conn: self.me(),
                    ip: self.ip,
                    reclaim,
                };
                let nameplate = match self.store().allocate(holder).await {
                    Ok(Some(nameplate)) => nameplate,
                    Ok(None) => {
                        return Step::End(Some(error(
                            ServerErrorKind::Busy,
                            "too many open codes, try again later",
                        )));
                    }
                    Err(unavailable) => return unavailable_step(&unavailable),
                };
                self.stand(&[self.id], Standing::Waiting);
                debug!(nameplate, "allocated");
                *phase = Phase::Waiting {
                    nameplate,
                    reclaim,
                    deadline: tokio::time::Instant::now() + self.config().slot_ttl,
                };
                Step::Reply(ServerMessage::Allocated {
                    nameplate,
                    expires_in_secs: self.config().slot_ttl.as_secs(),
                    reclaim: ReclaimToken((*token).clone()),
                })
            }
            (ClientMessage::Reclaim { nameplate, token }, Phase::Fresh) => {
                self.reclaim(nameplate, &token, phase).await
            }
            (ClientMessage::Watch { channels }, Phase::Fresh) => self.watch(channels, phase).await,
            (ClientMessage::Claim { nameplate }, Phase::Fresh) => {
                self.claim(nameplate, phase).await
            }
            (ClientMessage::Rejoin { channel, sender }, Phase::Fresh) => {
                self.rejoin(channel, sender, phase).await
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
                side.sent = side.sent.saturating_add(1);
                if !self
                    .store()
                    .deliver(*peer, self.me(), Event::Relay { body })
                    .await
                {
                    return Step::End(Some(ServerMessage::PeerGone));
                }
                Step::Quiet
            }
            (
                ClientMessage::Burn,
                Phase::Paired {
                    nameplate,
                    peer,
                    pake,
                    ..
                },
            ) => {
                // A wrong code, not an abandoned claim: the code is spent, and a claim of
                // it hears "unknown" until it expires.
                *pake = None;
                let burned = Event::Error {
                    kind: ServerErrorKind::Burned,
                    message: "the other side had a different code".into(),
                };
                self.store().deliver(*peer, self.me(), burned).await;
                if let Some(nameplate) = *nameplate {
                    self.store()
                        .burn(nameplate, self.me(), BurnReason::WrongCode)
                        .await;
                }
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
                let ice_servers = if side.exchanged() {
                    self.config().ice.for_pair(unix_now(), &side.turn_user)
                } else {
                    self.config().ice.stun_only()
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
        let mut admission = lock(&self.shared.admission);
        for id in ids {
            admission.set(*id, standing);
        }
    }

    /// "Paired", with STUN: TURN comes on asking, after the key exchange.
    fn paired(&self) -> ServerMessage {
        ServerMessage::Paired {
            ice_servers: self.config().ice.stun_only(),
        }
    }

    /// This connection's side of a new pair.
    fn side(&self, turn_user: String) -> Side {
        Side {
            turn_user,
            until: tokio::time::Instant::now() + self.config().pair_lifetime,
            budget: self.config().relay_budget,
            sent: 0,
            received: 0,
        }
    }

    fn allowed(&self, message: &ClientMessage) -> bool {
        let action = match message {
            ClientMessage::Claim { .. }
            | ClientMessage::Rejoin { .. }
            | ClientMessage::Reclaim { .. }
            | ClientMessage::Watch { .. } => Action::Claim,
            _ => Action::Allocate,
        };
        lock(&self.shared.addresses).allow(self.ip, action, Instant::now())
    }
}

fn unavailable_step(unavailable: &crate::rendezvous::store::Unavailable) -> Step {
    debug!(%unavailable, "refused: no store");
    Step::End(Some(error(ServerErrorKind::Busy, &unavailable.to_string())))
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn new_turn_user() -> String {
    let mut name = [0u8; 8];
    rand::thread_rng().fill(&mut name);
    hex::encode(name)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn error(kind: ServerErrorKind, message: &str) -> ServerMessage {
    ServerMessage::Error {
        kind,
        message: message.to_owned(),
    }
}

pub(super) async fn send<S>(sink: &mut S, message: &ServerMessage) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let json = serde_json::to_string(message).map_err(|_| ())?;
    sink.send(Message::text(json)).await.map_err(|_| ())
}
