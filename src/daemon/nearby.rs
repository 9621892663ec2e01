//! Sends between daemons on the same LAN without a rendezvous, a code or the internet
//! (`p2p send --nearby NAME`): the receiver is found by its mDNS announcement (`lan`),
//! the sender's offer and the receiver's answer cross one LAN TCP connection, the peer
//! connection uses host candidates only, and — as with `--manual` — both people compare
//! the short authentication string: the sender before anything is offered, the receiver
//! before accepting in `p2p inbox` (a nearby offer is never accepted without a person).

pub(crate) mod code;
mod places;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use self::places::{Places, Taken};
use super::jobs::{Job, Jobs, failure};
use super::manual::{NearbyLink, Via};
use crate::devices::mailbox::LAN_CHALLENGE_BYTES;
use crate::devices::registry::valid_device_name;
use crate::ipc::messages::{ErrorKind, Failure, JobInfo, JobState, PathPolicy};
use crate::lan::announce::on_local_subnet;
use crate::lan::signal::{self, NearbyMessage, SignalError};
use crate::terminal::escape_controls;
use crate::transfer::source::Sources;

/// Time a nearby connection has for its first frame. An offer and a paired device's ask
/// are both ready before their sender connects, so one that has not come by then is not
/// coming, and the connection only holds a place.
pub(crate) const FIRST_FRAME_LIMIT: Duration = Duration::from_secs(3);
/// Time from connecting to a nearby daemon to its answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Nearby connections handled at once. When all are held, the oldest one that has not
/// yet sent a well-formed first frame gives way to a newcomer (`places`); only when none
/// can is the newcomer closed unanswered.
pub(crate) const MAX_CONNECTIONS: usize = 8;
/// Nearby offers waiting for this daemon's person at once, so the LAN cannot fill the
/// inbox. An offer whose sender has not yet opened the channel gives way to a newer one
/// (the oldest first); only when every place holds an open channel is an offer refused
/// as busy.
pub const MAX_WAITING: usize = 4;
/// Time an offer has, from taking a waiting place, to open its channel and show the
/// strings: a sender on the LAN does it in about a second, and one that does not (a
/// fake offer, a sender gone) would otherwise hold the place until its ICE fails, ~30 s.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long a nearby offer waits for the person's answer before it is declined.
pub const DECISION_LIMIT: Duration = Duration::from_secs(10 * 60);
/// How a nearby sender's name is shown: it says who the sender claims to be, which only
/// the compared string backs.
const NEARBY_SUFFIX: &str = " (nearby)";

#[derive(Debug, thiserror::Error)]
pub enum NearbyError {
    #[error("cannot reach the nearby device at {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("the nearby device refused the offer: {0}")]
    Refused(String),
    #[error("the nearby device did not answer within {} s", ANSWER_WAIT.as_secs())]
    TimedOut,
}

/// Where a nearby send goes.
pub struct NearbyTarget {
    pub addr: SocketAddr,
    /// The name it announces.
    pub name: String,
}

/// Sender: offers `description` to the daemon at `addr` and returns its answer.
pub async fn offer(
    addr: SocketAddr,
    name: String,
    description: String,
) -> Result<String, NearbyError> {
    tokio::time::timeout(ANSWER_WAIT, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| NearbyError::Connect(addr, e))?;
        signal::write(&mut stream, &NearbyMessage::Offer { name, description }).await?;
        match signal::read(&mut stream).await? {
            NearbyMessage::Answer { description } => Ok(description),
            NearbyMessage::Refused { reason } => Err(NearbyError::Refused(
                crate::transfer::names::peer_text(&reason),
            )),
            _ => Err(NearbyError::Signal(SignalError::Malformed)),
        }
    })
    .await
    .unwrap_or(Err(NearbyError::TimedOut))
}

impl Jobs {
    /// The nearby daemon `name_or_id` names, as this daemon last saw it on the LAN.
    pub(super) fn nearby_target(
        &self,
        name_or_id: &str,
        path: PathPolicy,
    ) -> Result<NearbyTarget, Failure> {
        let Some(lan) = &self.context.lan else {
            return Err(failure(
                ErrorKind::BadRequest,
                "p2pd does not look for nearby devices (started with --no-lan-discovery, or mDNS could not start; see its log)",
            ));
        };
        if path != PathPolicy::Default {
            return Err(failure(
                ErrorKind::BadRequest,
                "--nearby stays on the LAN: leave out --force-relay and --require-direct",
            ));
        }
        let found = lan
            .find(name_or_id)
            .map_err(|e| failure(ErrorKind::NotFound, e.to_string()))?;
        let address = *found.addresses.first().ok_or_else(|| {
            failure(
                ErrorKind::NotFound,
                "the nearby device announced no address",
            )
        })?;
        Ok(NearbyTarget {
            addr: SocketAddr::new(address, found.port),
            name: found.name,
        })
    }

    /// Starts a send to a nearby daemon: a manual send whose answer the LAN carries.
    pub(super) fn start_send_nearby(
        &self,
        target: NearbyTarget,
        sources: Sources,
        text: Option<String>,
    ) -> JobInfo {
        let via = Via::Nearby(NearbyLink::To(
            target.addr,
            self.context.config.device_name.clone(),
        ));
        let job = self.start_manual_send(sources, text, PathPolicy::Default, via);
        job.set_device(&format!("{}{NEARBY_SUFFIX}", target.name), None);
        job.info.borrow().clone()
    }
}

type Table = Arc<Mutex<Places<CancellationToken>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A place held in a table, given up when dropped.
struct Place {
    table: Table,
    id: u64,
}

impl Place {
    /// Takes a place in `table`, ending (cancelling the token of) whichever gave way;
    /// with it, the token that ends this one should it give way in turn.
    fn take(table: &Table) -> Option<(Place, CancellationToken)> {
        let gives_way = CancellationToken::new();
        let taken = lock(table).take(gives_way.clone());
        match taken {
            Taken::In { id, evicted } => {
                if let Some(evicted) = evicted {
                    evicted.cancel();
                }
                let place = Place {
                    table: table.clone(),
                    id,
                };
                Some((place, gives_way))
            }
            Taken::Full => None,
        }
    }

    /// False if it already gave way.
    fn prove(&self) -> bool {
        lock(&self.table).prove(self.id)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.table).leave(self.id);
    }
}

/// Takes nearby offers on `listener` until the daemon stops: only from this machine's
/// subnets, a few at a time.
pub async fn accept_loop(listener: TcpListener, jobs: Arc<Jobs>) {
    let connections: Table = Arc::new(Mutex::new(Places::new(MAX_CONNECTIONS)));
    let waiting: Table = Arc::new(Mutex::new(Places::new(MAX_WAITING)));
    loop {
        let accepted = tokio::select! {
            _ = jobs.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "nearby accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !from_the_lan(peer) {
            debug!(%peer, "a nearby offer from outside this machine's subnets: closed");
            continue;
        }
        let Some((place, gives_way)) = Place::take(&connections) else {
            debug!("too many nearby connections past their first frame: closed");
            continue;
        };
        let (jobs2, waiting) = (jobs.clone(), waiting.clone());
        jobs.tracker.spawn(async move {
            tokio::select! {
                _ = gives_way.cancelled() => {
                    debug!("a nearby connection with no first frame gave way to a newer one");
                }
                _ = handle(stream, jobs2, &place, &waiting) => {}
            }
        });
    }
}

/// How often a search looks again among the daemons on the LAN.
pub(crate) const LAN_LOOK_EVERY: Duration = Duration::from_secs(5);
/// Time each nearby daemon gets to say whether it is the one sought.
pub(crate) const LAN_ASK_LIMIT: Duration = Duration::from_secs(2);
/// Nearby daemons asked at once.
pub(crate) const LAN_ASKS_AT_ONCE: usize = 8;

/// The proof an ask gives for a challenge's bytes ([`LAN_CHALLENGE_BYTES`] of them).
pub(crate) type Prove = Box<dyn FnOnce(&[u8]) -> NearbyMessage + Send>;

/// One ask of a LAN search: its first frame, and its answer to the challenge the daemon
/// asked replies with.
pub(crate) struct LanAsk {
    pub first: NearbyMessage,
    pub prove: Prove,
}

/// Asks the daemons announced on the LAN (at addresses on this machine's subnets, several
/// at once, every few seconds) with `ask`'s messages until one answers `here`; returns
/// that connection. Never ends without LAN discovery.
pub(crate) async fn search(
    context: &super::jobs::Context,
    ask: impl Fn() -> LanAsk,
) -> crate::lan::relay::LanRelay {
    use futures_util::StreamExt;
    let Some(lan) = &context.lan else {
        return std::future::pending().await;
    };
    loop {
        let mut asks = futures_util::stream::iter(lan_candidates(lan))
            .map(|addr| {
                let ask = ask();
                async move {
                    tokio::time::timeout(LAN_ASK_LIMIT, ask_one(addr, ask))
                        .await
                        .ok()
                        .flatten()
                }
            })
            .buffer_unordered(LAN_ASKS_AT_ONCE);
        while let Some(answered) = asks.next().await {
            if let Some(relay) = answered {
                return relay;
            }
        }
        tokio::time::sleep(LAN_LOOK_EVERY).await;
    }
}

/// Where the daemons announced on the LAN listen, on this machine's subnets only.
fn lan_candidates(lan: &crate::lan::Discovery) -> Vec<SocketAddr> {
    let interfaces = local_subnets();
    lan.nearby()
        .iter()
        .flat_map(|n| n.addresses.iter().map(|a| SocketAddr::new(*a, n.port)))
        .filter(|addr| on_local_subnet(addr.ip(), &interfaces))
        .collect()
}

/// One ask, within [`LAN_ASK_LIMIT`] in all: the first frame, the daemon's challenge and
/// this side's proof, its `here`.
async fn ask_one(addr: SocketAddr, ask: LanAsk) -> Option<crate::lan::relay::LanRelay> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    signal::write(&mut stream, &ask.first).await.ok()?;
    match signal::read(&mut stream).await.ok()? {
        NearbyMessage::Challenge { challenge } => {
            let challenge = hex::decode(challenge)
                .ok()
                .filter(|c| c.len() == LAN_CHALLENGE_BYTES)?;
            signal::write(&mut stream, &(ask.prove)(&challenge))
                .await
                .ok()?;
            match signal::read(&mut stream).await.ok()? {
                NearbyMessage::Here => Some(crate::lan::relay::LanRelay::new(stream)),
                _ => None,
            }
        }
        // A daemon from before challenges, recognising the ask alone. Taking it costs
        // the device nothing (the session still proves the pair secret) and keeps
        // meeting older versions on the LAN.
        NearbyMessage::Here => Some(crate::lan::relay::LanRelay::new(stream)),
        _ => None,
    }
}

/// This machine's interface subnets (not loopback), read now: addresses change.
pub(crate) fn local_subnets() -> Vec<(std::net::IpAddr, u8)> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list
            .into_iter()
            .filter(|i| !i.is_loopback())
            .map(|i| match i.addr {
                if_addrs::IfAddr::V4(v4) => (std::net::IpAddr::V4(v4.ip), v4.prefixlen),
                if_addrs::IfAddr::V6(v6) => (std::net::IpAddr::V6(v6.ip), v6.prefixlen),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn from_the_lan(peer: SocketAddr) -> bool {
    on_local_subnet(peer.ip().to_canonical(), &local_subnets())
}

async fn refuse(stream: &mut TcpStream, reason: &str) {
    let _ = signal::write(
        stream,
        &NearbyMessage::Refused {
            reason: reason.to_owned(),
        },
    )
    .await;
}

async fn handle(mut stream: TcpStream, jobs: Arc<Jobs>, connection: &Place, waiting: &Table) {
    let first = tokio::time::timeout(FIRST_FRAME_LIMIT, signal::read(&mut stream)).await;
    let (name, description) = match first {
        Ok(Ok(NearbyMessage::Offer { name, description })) => (name, description),
        // A paired device looking for its mailbox here instead of at the rendezvous: its
        // connection is proven once its proof is.
        Ok(Ok(NearbyMessage::Device { nonce, tag })) => {
            let asked = super::mailbox::lan_challenge(&jobs, &mut stream, (&nonce, &tag)).await;
            if let Some(pairing) = asked
                && connection.prove()
            {
                super::mailbox::answer_on_the_lan(jobs, stream, pairing).await;
            }
            return;
        }
        // A receiver asking for a code its rendezvous does not know.
        Ok(Ok(NearbyMessage::Code { nameplate })) => {
            if connection.prove() {
                code::answer(stream, &jobs.context, nameplate).await;
            }
            return;
        }
        Ok(Ok(_)) => return refuse(&mut stream, "expected an offer").await,
        Ok(Err(error)) => return debug!(%error, "a nearby offer failed"),
        Err(_) => return debug!("a nearby connection sent no offer in time"),
    };
    // From here the connection lasts only until the job answers (seconds), and what an
    // offer costs is bounded by the waiting places: it no longer gives way.
    if !connection.prove() {
        return;
    }
    if !valid_device_name(&name) {
        return refuse(&mut stream, "the sender's name is not usable").await;
    }
    let Some((place, gives_way)) = Place::take(waiting) else {
        return refuse(
            &mut stream,
            "busy: too many nearby offers wait for an answer there, try again later",
        )
        .await;
    };
    let (reply, answered) = oneshot::channel();
    let via = Via::Nearby(NearbyLink::From(reply));
    let started = jobs
        .start_receive_via(&description, None, false, PathPolicy::Default, via)
        .await;
    let job = match started {
        Ok(job) => job,
        Err(failure) => return refuse(&mut stream, &failure.message).await,
    };
    job.set_device(&format!("{}{NEARBY_SUFFIX}", escape_controls(&name)), None);
    info!(job = job.info.borrow().id, "an offer from a nearby device");
    let shutdown = jobs.shutdown.clone();
    jobs.tracker
        .spawn(hold_place(job, place, gives_way, shutdown).in_current_span());
    match tokio::time::timeout(ANSWER_WAIT, answered).await {
        Ok(Ok(description)) => {
            let _ = signal::write(&mut stream, &NearbyMessage::Answer { description }).await;
        }
        _ => refuse(&mut stream, "the receiver could not answer").await,
    }
}

/// Keeps a nearby offer's waiting place for as long as its job needs it: proven once the
/// channel is open and the strings are shown, given up once the person has decided (or
/// the job ended). Ends the job if the place gives way to a newer offer before that, if
/// its sender does not open the channel within [`CONNECT_LIMIT`], or if, open, the offer
/// does not reach the person within [`DECISION_LIMIT`] (the sender's person compares
/// first); once the person is asked, the job's own [`DECISION_LIMIT`] applies.
async fn hold_place(
    job: Arc<Job>,
    place: Place,
    gives_way: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut info = job.info.subscribe();
    let mut deadline = tokio::time::Instant::now() + CONNECT_LIMIT;
    let mut proven = false;
    loop {
        let asked = {
            let now = info.borrow_and_update();
            if now.state.is_final() || now.state == JobState::Transferring {
                return;
            }
            let asked = now.state == JobState::AwaitingApproval;
            if !proven && (now.sas.is_some() || asked) {
                proven = place.prove();
                deadline = tokio::time::Instant::now() + DECISION_LIMIT;
            }
            asked
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = gives_way.cancelled() => {
                return end(&job, "a newer nearby offer took its place before this sender connected");
            }
            _ = tokio::time::sleep_until(deadline), if !asked => {
                return end(&job, if proven {
                    "the nearby sender did not offer anything in time"
                } else {
                    "the nearby sender did not connect in time"
                });
            }
            changed = info.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

fn end(job: &Job, why: &str) {
    debug!(why, "a nearby offer gave up its place");
    job.fail(failure(ErrorKind::NoRoute, why));
    job.cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_offer_gets_its_answer_or_the_refusal_in_one_line() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for reply in [
                NearbyMessage::Answer {
                    description: "answer".into(),
                },
                NearbyMessage::Refused {
                    reason: "busy\u{1b}[2J".into(),
                },
            ] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let offer = signal::read(&mut stream).await.unwrap();
                assert_eq!(
                    offer,
                    NearbyMessage::Offer {
                        name: "laptop".into(),
                        description: "offer".into()
                    }
                );
                signal::write(&mut stream, &reply).await.unwrap();
            }
        });
        let ask = || offer(addr, "laptop".into(), "offer".into());
        assert_eq!(ask().await.unwrap(), "answer");
        let refused = ask().await.unwrap_err();
        assert!(matches!(refused, NearbyError::Refused(_)));
        assert!(!refused.to_string().contains('\u{1b}'), "{refused}");
        server.await.unwrap();
    }

    /// The asking side: it answers a challenge with the proof made for it, and also takes
    /// an older daemon's `here`, which comes without one.
    #[tokio::test]
    async fn an_ask_proves_itself_against_the_challenge_or_takes_an_older_here() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut proofs = Vec::new();
            for challenging in [true, false, true] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let first = signal::read(&mut stream).await.unwrap();
                assert!(matches!(first, NearbyMessage::Device { .. }), "{first:?}");
                if challenging {
                    let challenge = NearbyMessage::Challenge {
                        challenge: hex::encode([proofs.len() as u8; LAN_CHALLENGE_BYTES]),
                    };
                    signal::write(&mut stream, &challenge).await.unwrap();
                    proofs.push(signal::read(&mut stream).await.unwrap());
                }
                signal::write(&mut stream, &NearbyMessage::Here)
                    .await
                    .unwrap();
            }
            proofs
        });
        let ask = || LanAsk {
            first: NearbyMessage::Device {
                nonce: "00".into(),
                tag: "00".into(),
            },
            prove: Box::new(|challenge| NearbyMessage::Proof {
                proof: hex::encode(challenge),
            }),
        };
        for _ in 0..3 {
            assert!(ask_one(addr, ask()).await.is_some());
        }
        let proofs = server.await.unwrap();
        assert_eq!(
            proofs,
            [0u8, 1].map(|n| NearbyMessage::Proof {
                proof: hex::encode([n; LAN_CHALLENGE_BYTES])
            })
        );
    }
}
