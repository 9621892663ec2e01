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
use crate::devices::mailbox::{
    DeviceMessage, PairSecret, check_hello, hello, lan_ask_matches, mailbox,
};
use crate::lan::relay::LanRelay;
use crate::lan::signal::{self as lan_signal, NearbyMessage};
use crate::rendezvous::client::RendezvousClient;
use crate::rendezvous::session::Relay;
use crate::rendezvous::{Role, Session, SignalError};

/// Waits at the mailbox where `key` reaches this daemon, answers each arrival in its own
/// task, and waits again, until `stop`.
pub(super) async fn listen(
    jobs: Arc<Jobs>,
    key: [u8; 32],
    secret: PairSecret,
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
