//! Paired devices reached without a code (`p2p send --to NAME`): while the daemon runs it
//! waits at the rendezvous at one mailbox per paired device (`devices::mailbox`;
//! `listen.rs`); a sender meets it there or on the LAN (`meet.rs`), both open a session
//! from their pair secret and prove their identity keys, and then a transfer runs exactly
//! as a coded one. `p2p unpair` uses the same meeting to tell the other device.

mod listen;
mod meet;
mod watch;

pub use listen::{LanPairing, answer_on_the_lan, lan_challenge};
pub use meet::{PROBE_LIMIT, meet, probe, tell_unpaired};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use super::jobs::{Context, Jobs};
use super::record::unix_now;
use crate::devices::mailbox::{DeviceError, DeviceMessage, PairSecret};
use crate::rendezvous::SignalError;

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
    listening: Mutex<HashMap<[u8; 32], Listener>>,
    /// The rendezvous refused `watch` (it predates it): each listener waits there itself.
    direct: std::sync::atomic::AtomicBool,
    /// The watch connection runs (started by the first `sync`).
    watching: std::sync::atomic::AtomicBool,
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
            direct: Default::default(),
            watching: Default::default(),
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

    fn direct(&self) -> bool {
        self.direct.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One paired device's listener: its mailbox (the rejoin channel senders arrive on), the
/// knock that sends it there, and what stops it.
struct Listener {
    secret: PairSecret,
    channel: String,
    knock: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
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
    listening.retain(|key, listener| {
        let keep = wanted
            .iter()
            .any(|(k, s)| k == key && *s == listener.secret);
        if !keep {
            listener.stop.cancel();
        }
        keep
    });
    let ours = jobs.context.identity.public_key();
    for (key, secret) in wanted {
        if listening.contains_key(&key) {
            continue;
        }
        let stop = jobs.shutdown.child_token();
        let knock = Arc::new(tokio::sync::Notify::new());
        let listener = Listener {
            channel: crate::devices::mailbox::mailbox(&secret, &ours),
            secret: secret.clone(),
            knock: knock.clone(),
            stop: stop.clone(),
        };
        listening.insert(key, listener);
        jobs.tracker.spawn(
            listen::listen(jobs.clone(), key, secret, knock, stop)
                .instrument(tracing::info_span!("mailbox", device = %short(&key))),
        );
    }
    if !jobs
        .context
        .mailboxes
        .watching
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        jobs.tracker
            .spawn(watch::watch(jobs.clone()).instrument(tracing::info_span!("watch")));
    }
}

/// A device named in logs: the start of its public key, never its name (which is the
/// other person's words) or anything secret.
fn short(key: &[u8; 32]) -> String {
    hex::encode(&key[..4])
}

fn encode(message: &DeviceMessage) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<DeviceMessage, DeviceError> {
    serde_json::from_slice(bytes).map_err(|_| DeviceError::Malformed)
}

/// Whether `target` is still paired, with the same secret.
fn still_paired(context: &Context, target: &Target) -> bool {
    lock(&context.devices)
        .find_key(&target.key)
        .is_some_and(|d| d.secret.as_ref() == Some(&target.secret))
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
