//! Paired devices reached without a code (`p2p send --to NAME`): while the daemon runs it
//! waits at the rendezvous at one mailbox per paired device (`devices::mailbox`); a
//! sender meets it there, both open a session from their pair secret and prove their
//! identity keys, and then a transfer runs exactly as a coded one. `p2p unpair` uses the
//! same meeting to tell the other device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::jobs::{Context, Jobs};
use super::record::unix_now;
use crate::devices::mailbox::{
    DeviceError, DeviceMessage, LAN_NONCE_BYTES, PairSecret, check_hello, hello, lan_ask,
    lan_ask_matches, mailbox,
};
use crate::lan::relay::LanRelay;
use crate::lan::signal::{self as lan_signal, NearbyMessage};
use crate::rendezvous::client::RendezvousClient;
use crate::rendezvous::session::Relay;
use crate::rendezvous::{Role, Session, SignalError};

/// Time from meeting at a mailbox to an open, mutually proven session.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);
/// Pauses between attempts to reach the rendezvous (a wait there is itself long, so these
/// only space out quick failures).
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Arrivals at one mailbox being answered at once (each for at most `HANDSHAKE_LIMIT`).
pub(crate) const ANSWERS_AT_ONCE: usize = 4;
/// How long `p2p unpair` tries to tell the other device.
pub const UNPAIR_NOTICE_LIMIT: Duration = Duration::from_secs(10);

/// Why a meeting with a paired device did not open a session.
#[derive(Debug, thiserror::Error)]
pub enum MeetError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The session did not confirm: whoever waited at the mailbox lacks the pair secret.
    #[error(
        "whoever answered at {0}'s mailbox does not hold the pairing's secret (someone squatting at the rendezvous, or {0} paired again): pair again with p2p pair"
    )]
    NotPaired(String),
    #[error("{0} refused this device (it may have unpaired it): pair again with p2p pair")]
    Refused(String),
    #[error("{0} did not come online within {1}: send again when it is")]
    Offline(String, String),
    #[error("{0} was unpaired, or paired again, while this send waited: nothing was sent")]
    Unpaired(String),
    #[error("the other device stopped answering while the session opened")]
    Stalled,
}

impl MeetError {
    /// Worth another meeting: the rendezvous or the other side's connection went away.
    fn transient(&self) -> bool {
        // Whoever answers at a mailbox (the rendezvous's operator, anyone on the LAN) is
        // unauthenticated until the session confirms: a failure before that is theirs to
        // cause, so it must not end the send. Past it, only a holder of the pair secret
        // speaks.
        matches!(
            self,
            MeetError::Stalled | MeetError::NotPaired(_) | MeetError::Signal(_)
        )
    }
}

/// A paired device this daemon sends to.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub key: [u8; 32],
    pub secret: PairSecret,
    /// When a send stops waiting for it to come online (Unix seconds), and how long that
    /// wait was meant to be (for saying so).
    pub deadline_unix: u64,
    pub window: Duration,
}

/// The daemon's mailbox listeners, one per paired device, and the turns its senders take
/// at each device's mailbox.
pub struct Mailboxes {
    listening: Mutex<HashMap<[u8; 32], (PairSecret, CancellationToken)>>,
    /// Two sends waiting at one mailbox would replace each other there (the rendezvous
    /// keeps the newer of a side): one meeting per device at a time.
    turns: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped whenever the paired devices change, so a waiting send looks again whether
    /// its device is still paired (and lets an unpairing's notice through).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Mailboxes {
    fn default() -> Mailboxes {
        Mailboxes {
            listening: Default::default(),
            turns: Default::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mailboxes {
    fn turn(&self, key: &[u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.turns).entry(*key).or_default().clone()
    }
}

/// Listens at the mailbox of every paired device that can be reached, and stops
/// listening for any no longer paired. Called at start and after every change.
pub fn sync(jobs: &Arc<Jobs>) {
    // One lock across reading the devices and changing the listeners: two syncs at once
    // cannot interleave into a listener for a device just removed.
    let mut listening = lock(&jobs.context.mailboxes.listening);
    let wanted: Vec<([u8; 32], PairSecret)> = {
        let registry = lock(&jobs.context.devices);
        registry
            .list()
            .iter()
            .filter_map(|d| Some((d.key()?, d.secret.clone()?)))
            .collect()
    };
    jobs.context.mailboxes.changed.send_modify(|n| *n += 1);
    listening.retain(|key, (secret, stop)| {
        let keep = wanted.iter().any(|(k, s)| k == key && s == secret);
        if !keep {
            stop.cancel();
        }
        keep
    });
    for (key, secret) in wanted {
        if listening.contains_key(&key) {
            continue;
        }
        let stop = jobs.shutdown.child_token();
        listening.insert(key, (secret.clone(), stop.clone()));
        jobs.tracker.spawn(
            listen(jobs.clone(), key, secret, stop)
                .instrument(tracing::info_span!("mailbox", device = %short(&key))),
        );
    }
}

/// A device named in logs: the start of its public key, never its name (which is the
/// other person's words) or anything secret.
fn short(key: &[u8; 32]) -> String {
    hex::encode(&key[..4])
}

/// Waits at the mailbox where `key` reaches this daemon, answers each arrival in its own
/// task, and waits again, until `stop`.
async fn listen(jobs: Arc<Jobs>, key: [u8; 32], secret: PairSecret, stop: CancellationToken) {
    let context = jobs.context.clone();
    let channel = mailbox(&secret, &context.identity.public_key());
    let answering = Arc::new(tokio::sync::Semaphore::new(ANSWERS_AT_ONCE));
    let mut pause = FIRST_PAUSE;
    loop {
        // Whoever learns the mailbox's name can arrive again and again: with this many
        // arrivals still being answered, the listener waits before it listens again.
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = answering.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let waited = async {
            let mut client = RendezvousClient::connect(&context.rendezvous_url).await?;
            client.rejoin(&channel, false).await?;
            Ok::<_, SignalError>(client)
        };
        let waited = tokio::select! {
            _ = stop.cancelled() => return,
            waited = waited => waited,
        };
        match waited {
            Ok(client) => {
                pause = FIRST_PAUSE;
                let answered = answer(jobs.clone(), Box::new(client), key, secret.clone());
                jobs.tracker.spawn(
                    async move {
                        answered.await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            // The rendezvous ends every wait after a while: wait again at once.
            Err(SignalError::Expired) => pause = FIRST_PAUSE,
            Err(error) => {
                debug!(%error, "cannot wait at the mailbox");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

fn encode(message: &DeviceMessage) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<DeviceMessage, DeviceError> {
    serde_json::from_slice(bytes).map_err(|_| DeviceError::Malformed)
}

/// The receiving side of a meeting at our mailbox: the sender proves its identity first;
/// only then does this side prove its own and hear what the sender wants.
async fn answer(jobs: Arc<Jobs>, client: Box<dyn Relay>, key: [u8; 32], secret: PairSecret) {
    let context = &jobs.context;
    let ours = context.identity.public_key();
    let met = tokio::time::timeout(HANDSHAKE_LIMIT, async {
        let mut session = Session::between_devices(client, Role::Receiver, &secret, &ours).await?;
        let binding = session.binding_key();
        let theirs = decode(&session.recv().await?)?;
        if let Err(error) = check_hello(&theirs, &binding, Role::Sender, &key, &ours) {
            let _ = session.send(&encode(&DeviceMessage::Refused)).await;
            session.close().await;
            return Err(MeetError::Device(error));
        }
        let ours = hello(&context.identity, &binding, Role::Receiver, &key);
        session.send(&encode(&ours)).await?;
        let purpose = decode(&session.recv().await?)?;
        Ok::<_, MeetError>((session, purpose))
    })
    .await
    .unwrap_or(Err(MeetError::Stalled));
    let (mut session, purpose) = match met {
        Ok(met) => met,
        Err(error) => {
            // A paired device's failure and a stranger's look alike from here; neither
            // reaches the person, and neither says more than this line.
            warn!(%error, "a meeting at a device's mailbox failed");
            return;
        }
    };
    seen(context, &key).await;
    match purpose {
        DeviceMessage::Transfer => {
            info!("a paired device is sending");
            if let Err(failure) = jobs.start_inbound(session, key).await {
                warn!(message = %failure.message, "cannot take a paired device's transfer");
            }
        }
        DeviceMessage::Unpair => {
            let forgotten = forget(context, &key).await;
            if forgotten {
                let _ = session.send(&encode(&DeviceMessage::Forgotten)).await;
                info!("a paired device unpaired this one: forgotten");
            }
            session.close().await;
            sync(&jobs);
        }
        // Proving it is here was all the sender wanted.
        _ => session.close().await,
    }
}

/// The sending side: looks for `target` on the LAN and waits at its mailbox on the
/// rendezvous at the same time, until it comes (or its deadline); then opens and proves
/// the session and says what it is for.
pub async fn meet(
    context: &Context,
    target: &Target,
    purpose: DeviceMessage,
) -> Result<Session, MeetError> {
    let mut changes = context.mailboxes.changed.subscribe();
    let turn = context.mailboxes.turn(&target.key);
    let _turn = turn.lock().await;
    let channel = mailbox(&target.secret, &target.key);
    let mut pause = FIRST_PAUSE;
    // An unpairing's notice goes to a device this side has just forgotten.
    let must_be_paired = purpose != DeviceMessage::Unpair;
    loop {
        if must_be_paired && !still_paired(context, target) {
            return Err(MeetError::Unpaired(target.name.clone()));
        }
        let left = target.deadline_unix.saturating_sub(unix_now());
        let offline = || MeetError::Offline(target.name.clone(), window_words(target.window));
        if left == 0 {
            return Err(offline());
        }
        let left = Duration::from_secs(left);
        let found = tokio::time::timeout(left, async {
            tokio::select! {
                client = at_the_rendezvous(context, &channel) => Some(client),
                relay = on_the_lan(context, target) => Some(relay),
                _ = changes.changed() => None,
            }
        })
        .await
        .map_err(|_| offline())?;
        let Some(found) = found else {
            // The paired devices changed: look again whether this one still is.
            continue;
        };
        let opened = tokio::time::timeout(HANDSHAKE_LIMIT, open(context, found, target, &purpose))
            .await
            .unwrap_or(Err(MeetError::Stalled));
        let error = match opened {
            Ok(session) => {
                seen(context, &target.key).await;
                return Ok(session);
            }
            Err(error) => error,
        };
        if !error.transient() {
            return Err(error);
        }
        debug!(%error, "meeting a paired device failed; trying again");
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Whether `target` is still paired, with the same secret.
fn still_paired(context: &Context, target: &Target) -> bool {
    lock(&context.devices)
        .find_key(&target.key)
        .is_some_and(|d| d.secret.as_ref() == Some(&target.secret))
}

/// Waits at the mailbox on the rendezvous until the device is there, trying again (with
/// pauses) while the rendezvous cannot be reached.
async fn at_the_rendezvous(context: &Context, channel: &str) -> Box<dyn Relay> {
    let mut pause = FIRST_PAUSE;
    loop {
        let waited = async {
            let mut client = RendezvousClient::connect(&context.rendezvous_url).await?;
            client.rejoin(channel, true).await?;
            Ok::<_, SignalError>(client)
        };
        match waited.await {
            Ok(client) => return Box::new(client),
            // The rendezvous ends every wait after a while: wait again at once.
            Err(SignalError::Expired) => pause = FIRST_PAUSE,
            Err(error) => {
                debug!(%error, "cannot wait at the device's mailbox");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// How often a waiting send looks for its device among the daemons on the LAN.
pub(crate) const LAN_LOOK_EVERY: Duration = Duration::from_secs(5);
/// Time each nearby daemon gets to say whether it is the device.
pub(crate) const LAN_ASK_LIMIT: Duration = Duration::from_secs(2);
/// Nearby daemons asked at once.
pub(crate) const LAN_ASKS_AT_ONCE: usize = 8;

/// Asks the daemons announced on the LAN (on this machine's subnets, several at once),
/// every few seconds, whether one is `target`; returns the connection of the one that
/// is. Never ends without LAN discovery.
async fn on_the_lan(context: &Context, target: &Target) -> Box<dyn Relay> {
    use futures_util::StreamExt;
    let Some(lan) = &context.lan else {
        return std::future::pending().await;
    };
    loop {
        let interfaces = crate::daemon::nearby::local_subnets();
        let candidates: Vec<std::net::SocketAddr> = lan
            .nearby()
            .iter()
            .flat_map(|n| {
                n.addresses
                    .iter()
                    .map(|a| std::net::SocketAddr::new(*a, n.port))
            })
            .filter(|addr| crate::lan::announce::on_local_subnet(addr.ip(), &interfaces))
            .collect();
        let mut asks = futures_util::stream::iter(candidates)
            .map(|addr| async move {
                tokio::time::timeout(LAN_ASK_LIMIT, ask_nearby(addr, target))
                    .await
                    .ok()
                    .flatten()
            })
            .buffer_unordered(LAN_ASKS_AT_ONCE);
        while let Some(answered) = asks.next().await {
            if let Some(relay) = answered {
                debug!("met a paired device on the LAN");
                return Box::new(relay);
            }
        }
        tokio::time::sleep(LAN_LOOK_EVERY).await;
    }
}

async fn ask_nearby(addr: std::net::SocketAddr, target: &Target) -> Option<LanRelay> {
    use rand::RngCore;
    let mut nonce = [0u8; LAN_NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let tag = lan_ask(&target.secret, &target.key, &nonce);
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let ask = NearbyMessage::Device {
        nonce: hex::encode(nonce),
        tag: hex::encode(tag),
    };
    lan_signal::write(&mut stream, &ask).await.ok()?;
    match lan_signal::read(&mut stream).await.ok()? {
        NearbyMessage::Here => Some(LanRelay::new(stream)),
        _ => None,
    }
}

/// A paired device reached us on the LAN with an ask: if it is meant for this daemon by
/// one of its pairings, say so and answer there as at the rendezvous; else close, saying
/// nothing.
pub async fn answer_on_the_lan(
    jobs: Arc<Jobs>,
    mut stream: tokio::net::TcpStream,
    (nonce, tag): (&str, &str),
) {
    let (Ok(nonce), Ok(tag)) = (hex::decode(nonce), hex::decode(tag)) else {
        return;
    };
    let ours = jobs.context.identity.public_key();
    let pairing = {
        let registry = lock(&jobs.context.devices);
        registry.list().iter().find_map(|d| {
            let secret = d.secret.clone()?;
            lan_ask_matches(&secret, &ours, &nonce, &tag).then_some((d.key()?, secret))
        })
    };
    let Some((key, secret)) = pairing else {
        return;
    };
    if lan_signal::write(&mut stream, &NearbyMessage::Here)
        .await
        .is_ok()
    {
        answer(jobs, Box::new(LanRelay::new(stream)), key, secret).await;
    }
}

async fn open(
    context: &Context,
    client: Box<dyn Relay>,
    target: &Target,
    purpose: &DeviceMessage,
) -> Result<Session, MeetError> {
    let ours = context.identity.public_key();
    let mut session = Session::between_devices(client, Role::Sender, &target.secret, &target.key)
        .await
        .map_err(|e| match e {
            SignalError::WrongCode { .. } => MeetError::NotPaired(target.name.clone()),
            other => MeetError::Signal(other),
        })?;
    let binding = session.binding_key();
    let hello_message = hello(&context.identity, &binding, Role::Sender, &target.key);
    session.send(&encode(&hello_message)).await?;
    let theirs = decode(&session.recv().await?)?;
    if theirs == DeviceMessage::Refused {
        return Err(MeetError::Refused(target.name.clone()));
    }
    check_hello(&theirs, &binding, Role::Receiver, &target.key, &ours)?;
    session.send(&encode(purpose)).await?;
    Ok(session)
}

/// How long `p2p devices` waits to hear from each paired device.
pub const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// Whether `target` answers at its mailbox and proves its identity within
/// [`PROBE_LIMIT`].
pub async fn probe(context: &Context, target: &Target) -> bool {
    let met = tokio::time::timeout(PROBE_LIMIT, meet(context, target, DeviceMessage::Ping)).await;
    match met {
        Ok(Ok(session)) => {
            session.close().await;
            true
        }
        _ => false,
    }
}

/// Tells `target` it was unpaired here, if it can be reached within
/// [`UNPAIR_NOTICE_LIMIT`]; true once it said it forgot this device.
pub async fn tell_unpaired(context: &Context, target: &Target) -> bool {
    let told = tokio::time::timeout(UNPAIR_NOTICE_LIMIT, async {
        let mut session = meet(context, target, DeviceMessage::Unpair).await.ok()?;
        let reply = session.recv().await.ok()?;
        session.close().await;
        Some(decode(&reply).ok()? == DeviceMessage::Forgotten)
    })
    .await;
    matches!(told, Ok(Some(true)))
}

/// A waiting window for people: "24 h", "90 min", "45 s".
pub fn window_words(window: Duration) -> String {
    let secs = window.as_secs();
    if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// Notes that a paired device was just heard from.
async fn seen(context: &Context, key: &[u8; 32]) {
    let (devices, key) = (context.devices.clone(), *key);
    let saved = tokio::task::spawn_blocking(move || lock(&devices).seen(&key, unix_now())).await;
    if !matches!(saved, Ok(Ok(()))) {
        warn!("cannot record when a paired device was last seen");
    }
}

/// Forgets the device with `key`; true if it was paired and is now forgotten on disk.
async fn forget(context: &Context, key: &[u8; 32]) -> bool {
    let (devices, key) = (context.devices.clone(), *key);
    tokio::task::spawn_blocking(move || {
        let mut registry = lock(&devices);
        let name = registry.find_key(&key).map(|d| d.name.clone());
        match name {
            Some(name) => registry.remove(&name).is_ok_and(|r| r.is_some()),
            None => false,
        }
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_windows_are_said_in_the_largest_whole_unit() {
        assert_eq!(window_words(Duration::from_secs(24 * 3600)), "24 h");
        assert_eq!(window_words(Duration::from_secs(5400)), "90 min");
        assert_eq!(window_words(Duration::from_secs(45)), "45 s");
    }

    #[test]
    fn only_what_an_unauthenticated_party_can_cause_is_worth_another_meeting() {
        assert!(MeetError::Stalled.transient());
        assert!(MeetError::Signal(SignalError::PeerGone).transient());
        assert!(MeetError::NotPaired("laptop".into()).transient());
        assert!(!MeetError::Refused("laptop".into()).transient());
        assert!(!MeetError::Device(DeviceError::BadSignature).transient());
    }
}
