//! Codes on the LAN (issue #29): two daemons with default settings each run an embedded
//! rendezvous on loopback, so a code from one is unknown to the other's. A receiver whose
//! rendezvous does not know a code asks the daemons announced on the LAN; one whose
//! rendezvous holds that nameplate claims it there for the asker and carries the
//! rendezvous's relays over the LAN connection. The PAKE runs end to end as on any coded
//! transfer: a daemon that answers for the wrong code learns nothing, and a wrong code
//! fails as one. The claim costs what any claim costs at that rendezvous (its budgets).

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::{LAN_ASK_LIMIT, LAN_ASKS_AT_ONCE, lan_candidates};
use crate::daemon::jobs::Context;
use crate::lan::relay::LanRelay;
use crate::lan::signal::{self, NearbyMessage};
use crate::rendezvous::SignalError;
use crate::rendezvous::client::RendezvousClient;

/// Relays queued from the LAN toward the rendezvous: signalling is a few messages.
const QUEUED: usize = 16;

/// Asks every daemon announced on this machine's subnets, several at once, whether its
/// rendezvous holds `nameplate`; the first that claimed it there gives the connection
/// the session runs over. `None` when none does (or there is no LAN discovery).
pub(crate) async fn ask_the_lan(context: &Context, nameplate: u32) -> Option<LanRelay> {
    use futures_util::StreamExt;
    let lan = context.lan.as_ref()?;
    let mut asks = futures_util::stream::iter(lan_candidates(lan))
        .map(|addr| async move {
            tokio::time::timeout(LAN_ASK_LIMIT, ask_one(addr, nameplate))
                .await
                .ok()
                .flatten()
        })
        .buffer_unordered(LAN_ASKS_AT_ONCE);
    while let Some(answered) = asks.next().await {
        if answered.is_some() {
            return answered;
        }
    }
    None
}

async fn ask_one(addr: SocketAddr, nameplate: u32) -> Option<LanRelay> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    signal::write(&mut stream, &NearbyMessage::Code { nameplate })
        .await
        .ok()?;
    match signal::read(&mut stream).await.ok()? {
        NearbyMessage::Claimed => Some(LanRelay::new(stream)),
        _ => None,
    }
}

/// A daemon on the LAN asked for `nameplate`: claim it at this daemon's rendezvous and,
/// once paired, carry relays both ways until either side ends. Anything else: `Refused`.
pub(super) async fn answer(mut stream: TcpStream, context: &Context, nameplate: u32) {
    let claimed = async {
        let mut client = context.rendezvous_url.connect().await?;
        client.claim(nameplate).await?;
        Ok::<_, SignalError>(client)
    };
    let client = match tokio::time::timeout(LAN_ASK_LIMIT, claimed).await {
        Ok(Ok(client)) => client,
        // Not ours (the usual answer): said without detail, as to any asker.
        _ => {
            let refused = NearbyMessage::Refused {
                reason: "no such code here".into(),
            };
            let _ = signal::write(&mut stream, &refused).await;
            return;
        }
    };
    if signal::write(&mut stream, &NearbyMessage::Claimed)
        .await
        .is_ok()
    {
        carry(stream, client).await;
    }
}

/// Relays between the LAN connection and the rendezvous until either ends. The LAN side
/// is read on its own task, so a frame is never cut by the other side's activity.
async fn carry(stream: TcpStream, mut client: RendezvousClient) {
    let (mut read, mut write) = stream.into_split();
    let (to_rendezvous, mut from_lan) = mpsc::channel::<Vec<u8>>(QUEUED);
    let reader = tokio::spawn(async move {
        while let Ok(frame) = signal::read_frame(&mut read).await {
            if to_rendezvous.send(frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            frame = from_lan.recv() => match frame {
                Some(frame) => {
                    if client.relay(&frame).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            body = client.recv_relay() => match body {
                Ok(body) => {
                    if signal::write_frame(&mut write, &body).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    debug!(%error, "a code carried for the LAN ended at the rendezvous");
                    break;
                }
            },
        }
    }
    reader.abort();
    client.close().await;
}
