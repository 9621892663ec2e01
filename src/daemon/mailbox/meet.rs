//! The sending side: meeting a paired device at its mailbox on the rendezvous or on the
//! LAN, opening and proving the session; probing whether it is online; telling it it was
//! unpaired.

use std::time::Duration;

use tracing::debug;

use super::{
    FIRST_PAUSE, HANDSHAKE_LIMIT, MAX_PAUSE, MeetError, Target, UNPAIR_NOTICE_LIMIT, decode,
    encode, seen, still_paired, window_words,
};
use crate::daemon::jobs::Context;
use crate::daemon::nearby::LanAsk;
use crate::daemon::record::unix_now;
use crate::devices::mailbox::{
    DeviceMessage, LAN_NONCE_BYTES, check_hello, hello, lan_ask, lan_proof, mailbox,
};
use crate::lan::signal::NearbyMessage;
use crate::rendezvous::session::Relay;
use crate::rendezvous::{Role, Session, SignalError};

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

/// Waits at the mailbox on the rendezvous until the device is there, trying again (with
/// pauses) while the rendezvous cannot be reached.
async fn at_the_rendezvous(context: &Context, channel: &str) -> Box<dyn Relay> {
    let mut pause = FIRST_PAUSE;
    loop {
        let waited = async {
            let mut client = context.rendezvous_url.connect().await?;
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

/// Asks the daemons announced on the LAN whether one is `target`; returns the connection
/// of the one that is. Never ends without LAN discovery.
async fn on_the_lan(context: &Context, target: &Target) -> Box<dyn Relay> {
    let ask = || {
        use rand::RngCore;
        let mut nonce = [0u8; LAN_NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let tag = lan_ask(&target.secret, &target.key, &nonce);
        let (secret, key) = (target.secret.clone(), target.key);
        LanAsk {
            first: NearbyMessage::Device {
                nonce: hex::encode(nonce),
                tag: hex::encode(tag),
            },
            prove: Box::new(move |challenge| NearbyMessage::Proof {
                proof: hex::encode(lan_proof(&secret, &key, &nonce, challenge)),
            }),
        }
    };
    let relay = crate::daemon::nearby::search(context, ask).await;
    debug!("met a paired device on the LAN");
    Box::new(relay)
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
