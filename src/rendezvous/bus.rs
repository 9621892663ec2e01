//! Delivery between rendezvous connections by reference, not by shared channels: each
//! connection is a [`ConnRef`] (its instance and its id there) with an inbox, and the
//! other side of its pair sends it [`Event`]s. [`Inboxes`] delivers to this instance's
//! connections; the Redis store carries events for other instances over pub/sub and hands
//! them to the `Inboxes` there.
//!
//! An inbox is unbounded, but what reaches it is: each side of a pair may relay at most
//! its `pair::RelayBudget` (256 messages, 256 KiB), and a pair sends a handful of other
//! events in its life.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::messages::ServerErrorKind;

/// One connection, on one rendezvous instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnRef {
    /// Random per instance run.
    pub instance: u64,
    /// The connection's admission id on that instance.
    pub id: u64,
}

/// What one connection tells another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The sender claimed our nameplate or met us on our rejoin channel. `counted`: it
    /// is on our instance and already counted our address's paired connection.
    Paired {
        turn_user: String,
        counted: bool,
    },
    /// The pair we claimed was refused by the other side's instance (its address has too
    /// many pairs); the nameplate waits again.
    Refused {
        message: String,
    },
    Relay {
        body: String,
    },
    PeerGone,
    /// A sender waits on `channel`, which the receiving connection watches.
    Knock {
        channel: String,
    },
    /// Ends the receiver with this answer (burned, abandoned, replaced).
    Error {
        kind: ServerErrorKind,
        message: String,
    },
}

impl Event {
    /// Whether a sender expects an answer: an event for a connection that is gone is
    /// answered with [`Event::PeerGone`].
    pub fn bounces(&self) -> bool {
        matches!(self, Event::Paired { .. } | Event::Relay { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub from: ConnRef,
    pub event: Event,
}

pub type Inbox = mpsc::UnboundedReceiver<Delivery>;

/// This instance's connections' inboxes.
#[derive(Default)]
pub struct Inboxes {
    open: Mutex<HashMap<u64, mpsc::UnboundedSender<Delivery>>>,
}

impl Inboxes {
    pub fn register(&self, id: u64) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.open).insert(id, tx);
        rx
    }

    /// After this, nothing more reaches `id`'s inbox: what is in it can be drained.
    pub fn unregister(&self, id: u64) {
        lock(&self.open).remove(&id);
    }

    /// `false` when `id` is gone (or never was).
    pub fn deliver(&self, id: u64, delivery: Delivery) -> bool {
        lock(&self.open)
            .get(&id)
            .is_some_and(|tx| tx.send(delivery).is_ok())
    }

    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock would be a bug in this module; the data stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unregistered_inbox_keeps_what_came_before_and_refuses_the_rest() {
        let inboxes = Inboxes::default();
        let mut inbox = inboxes.register(7);
        let from = ConnRef { instance: 1, id: 2 };
        let gone = Delivery {
            from,
            event: Event::PeerGone,
        };
        assert!(inboxes.deliver(7, gone.clone()));
        inboxes.unregister(7);
        assert!(!inboxes.deliver(7, gone.clone()));
        assert!(!inboxes.deliver(8, gone.clone()));
        assert_eq!(inbox.try_recv().unwrap(), gone);
        assert!(inbox.try_recv().is_err());
        assert!(inboxes.is_empty());
    }

    #[test]
    fn events_cross_instances_as_json() {
        let delivery = Delivery {
            from: ConnRef { instance: 1, id: 2 },
            event: Event::Error {
                kind: ServerErrorKind::Abandoned,
                message: "x".into(),
            },
        };
        let json = serde_json::to_string(&delivery).unwrap();
        assert_eq!(serde_json::from_str::<Delivery>(&json).unwrap(), delivery);
        assert!(Event::Relay { body: "x".into() }.bounces());
        assert!(!Event::PeerGone.bounces());
    }
}
