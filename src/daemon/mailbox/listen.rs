//! The receiving side: waiting at each paired device's mailbox on the rendezvous, and
//! answering an arrival there or on the LAN.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::{
    ANSWERS_AT_ONCE, FIRST_PAUSE, HANDSHAKE_LIMIT, MAX_PAUSE, MeetError, decode, encode, forget,
    lock, seen, sync,
};
use crate::daemon::jobs::Jobs;
use crate::daemon::nearby::LAN_ASK_LIMIT;
use crate::devices::mailbox::{
    DeviceMessage, LAN_CHALLENGE_BYTES, PairSecret, check_hello, hello, lan_ask_proven, mailbox,
};
use crate::lan::relay::LanRelay;
use crate::lan::signal::{self as lan_signal, NearbyMessage};
use crate::rendezvous::session::Relay;
use crate::rendezvous::{Role, Session, SignalError};

/// How long a knocked mailbox waits at the rendezvous for the sender that knocked.
const KNOCKED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits at the mailbox where `key` reaches this daemon, answers each arrival in its own
/// task, and waits again, until `stop`. While the daemon's one watch connection stands
/// for every mailbox (`watch.rs`), this waits for its knock and only then goes to the
/// rendezvous to meet the sender; with a rendezvous that predates `watch`, it waits
/// there itself, one connection per paired device.
pub(super) async fn listen(
    jobs: Arc<Jobs>,
    key: [u8; 32],
    secret: PairSecret,
    knock: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
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
        let watched = !context.mailboxes.direct();
        if watched {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = knock.notified() => {}
            }
        }
        let waited = async {
            let mut client = context.rendezvous_url.connect().await?;
            client.rejoin(&channel, false).await?;
            Ok::<_, SignalError>(client)
        };
        // Knocked: the sender is there already, or soon; a knock nobody follows (it left
        // again) ends like the rendezvous's own end of a wait.
        let waited = async {
            match watched {
                true => tokio::time::timeout(KNOCKED_WAIT, waited)
                    .await
                    .unwrap_or(Err(SignalError::Expired)),
                false => waited.await,
            }
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

/// A paired device's ask on the LAN, and which of this daemon's pairings it proved.
pub struct LanPairing {
    key: [u8; 32],
    secret: PairSecret,
}

/// Answers a LAN ask (`nonce`, `tag`) with a fresh challenge — every ask, whether or not
/// one of this daemon's pairings recognises it, so the reply says nothing of them — and
/// waits (at most [`LAN_ASK_LIMIT`]) for the asker's proof. The pairing it proves, if
/// any: a recorded ask played again, here or on another network, cannot answer a new
/// challenge, so it no longer tells anyone this device is here.
///
/// An older asker does not understand the challenge: its LAN meeting fails and it meets
/// this device at the rendezvous, where it was waiting at the same time.
pub async fn lan_challenge(
    jobs: &Jobs,
    stream: &mut tokio::net::TcpStream,
    (nonce, tag): (&str, &str),
) -> Option<LanPairing> {
    let challenge = {
        use rand::RngCore;
        let mut challenge = [0u8; LAN_CHALLENGE_BYTES];
        rand::thread_rng().fill_bytes(&mut challenge);
        challenge
    };
    let sent = NearbyMessage::Challenge {
        challenge: hex::encode(challenge),
    };
    lan_signal::write(stream, &sent).await.ok()?;
    let answered = tokio::time::timeout(LAN_ASK_LIMIT, lan_signal::read(stream)).await;
    let Ok(Ok(NearbyMessage::Proof { proof })) = answered else {
        return None;
    };
    let (nonce, tag, proof) = (
        hex::decode(nonce).ok()?,
        hex::decode(tag).ok()?,
        hex::decode(proof).ok()?,
    );
    let ours = jobs.context.identity.public_key();
    let registry = lock(&jobs.context.devices);
    registry.list().iter().find_map(|d| {
        let secret = d.secret.clone()?;
        lan_ask_proven(&secret, &ours, (&nonce, &tag), &challenge, &proof).then_some(LanPairing {
            key: d.key()?,
            secret,
        })
    })
}

/// A paired device proved its ask on the LAN ([`lan_challenge`]): say so, and answer
/// there as at the rendezvous.
pub async fn answer_on_the_lan(
    jobs: Arc<Jobs>,
    mut stream: tokio::net::TcpStream,
    LanPairing { key, secret }: LanPairing,
) {
    if lan_signal::write(&mut stream, &NearbyMessage::Here)
        .await
        .is_ok()
    {
        answer(jobs, Box::new(LanRelay::new(stream)), key, secret).await;
    }
}
