//! Where the rendezvous keeps its slots and how its connections reach each other: in this
//! process ([`memory::MemoryStore`]).

pub mod memory;

use std::net::IpAddr;
use tokio::sync::watch;

use super::bus::{ConnRef, Event, Inbox};
use super::slots::{BurnReason, Claim, Lifetimes, Rejoin, Waiter};

/// The store cannot be reached: the request is refused (`busy`), naming the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the rendezvous cannot reach its store ({0}): try again in a moment")]
pub struct Unavailable(pub String);

/// What a store is sized by.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Nameplates (burned ones included) and rejoin channels, each.
    pub max_slots: usize,
    pub lifetimes: Lifetimes,
}

/// Slots and delivery. Every slot operation is atomic at the store, whichever instance
/// asks; the ones after a pairing (put back, burn, release, leave) are best effort, since
/// their entries expire anyway.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// This instance's part of every [`ConnRef`].
    fn instance(&self) -> u64;
    fn register(&self, id: u64) -> Inbox;
    fn unregister(&self, id: u64);
    /// Sends `event` to `to`; `false` when `to` is known to be gone. A connection that
    /// is gone on another instance answers an event that [`Event::bounces`] with
    /// `PeerGone`.
    async fn deliver(&self, to: ConnRef, from: ConnRef, event: Event) -> bool;
    /// `None` while the store serves; else why not. Changes are announced.
    fn health(&self) -> watch::Receiver<Option<String>>;
    /// Nameplates held, as lately known: what sizes the space and the miss budget.
    fn open(&self) -> usize;

    /// `Ok(None)` when full.
    async fn allocate(&self, conn: ConnRef, ip: IpAddr) -> Result<Option<u32>, Unavailable>;
    async fn claim(&self, nameplate: u32, claimer: ConnRef) -> Result<Claim, Unavailable>;
    async fn put_back(&self, nameplate: u32, waiting: ConnRef, claimer: ConnRef, ip: IpAddr);
    async fn burn(&self, nameplate: u32, member: ConnRef, reason: BurnReason);
    async fn release(&self, nameplate: u32, member: ConnRef);
    async fn rejoin(
        &self,
        channel: &str,
        sender: bool,
        conn: ConnRef,
        ip: IpAddr,
    ) -> Result<Rejoin, Unavailable>;
    async fn put_back_rejoin(&self, channel: &str, waiter: Waiter);
    async fn leave_rejoin(&self, channel: &str, conn: ConnRef);
}

/// A random id for this instance's run.
pub fn instance_id() -> u64 {
    rand::random::<u64>() >> 1 | 1
}
