//! The daemon's one connection that stands at the rendezvous for all of its mailboxes
//! (`watch`): when a sender waits at one, the rendezvous knocks, and that device's
//! listener (`listen.rs`) goes to meet it on a connection of its own. Paired devices thus
//! cost one connection per daemon while nobody sends, not one each.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{FIRST_PAUSE, MAX_PAUSE, lock};
use crate::daemon::jobs::Jobs;
use crate::rendezvous::SignalError;

/// Watches every listener's mailbox, again after each change of the paired devices and
/// each lost connection, until the daemon stops; gives up for good (listeners then wait
/// at their mailboxes themselves) when the rendezvous does not know `watch`.
pub(super) async fn watch(jobs: Arc<Jobs>) {
    let context = &jobs.context;
    let stop = jobs.shutdown.clone();
    let mut changes = context.mailboxes.changed.subscribe();
    let mut pause = FIRST_PAUSE;
    loop {
        changes.borrow_and_update();
        let knocks: HashMap<String, Arc<Notify>> = lock(&context.mailboxes.listening)
            .values()
            .map(|l| (l.channel.clone(), l.knock.clone()))
            .collect();
        if knocks.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.changed() => continue,
            }
        }
        let channels: Vec<String> = knocks.keys().cloned().collect();
        let watched = async {
            let mut client = context.rendezvous_url.connect().await?;
            client.watch(&channels).await?;
            Ok::<_, SignalError>(client)
        };
        let mut client = tokio::select! {
            _ = stop.cancelled() => return,
            watched = watched => match watched {
                Ok(client) => client,
                Err(SignalError::Protocol(_)) => {
                    warn!("the rendezvous does not know watch: waiting at each paired device's mailbox instead");
                    context
                        .mailboxes
                        .direct
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    for knock in knocks.values() {
                        knock.notify_one();
                    }
                    return;
                }
                Err(error) => {
                    debug!(%error, "cannot watch the mailboxes");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
            },
        };
        pause = FIRST_PAUSE;
        let lost = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    client.close().await;
                    return;
                }
                // Watch again, with the devices paired now.
                _ = changes.changed() => {
                    client.close().await;
                    break false;
                }
                knocked = client.knocked() => match knocked {
                    Ok(channel) => {
                        if let Some(knock) = knocks.get(&channel) {
                            knock.notify_one();
                        }
                    }
                    // The rendezvous ends every watch after a while: watch again at once.
                    Err(SignalError::Expired) => break false,
                    Err(error) => {
                        debug!(%error, "the mailbox watch ended");
                        break true;
                    }
                }
            }
        };
        if lost {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(FIRST_PAUSE) => {}
            }
        }
    }
}
