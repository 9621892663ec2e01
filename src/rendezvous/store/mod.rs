//! Where the rendezvous keeps its slots and how its connections reach each other: in this
//! process ([`memory::MemoryStore`], the default and the embedded rendezvous's), or in
//! Redis ([`redis::RedisStore`]), shared by several instances so that any of them serves
//! any client.

mod lua;
pub mod memory;
pub mod redis;

use std::net::IpAddr;
use tokio::sync::watch;

use super::bus::{ConnRef, Event, Inbox};
use super::slots::{BurnReason, Claim, Holder, Lifetimes, ReclaimHash, Rejoin, Waiter};

/// Which store a rendezvous uses (`p2pd rendezvous --store`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreKind {
    #[default]
    Memory,
    /// `redis://`, `rediss://` or `redis+unix://` (Redis or Valkey).
    Redis(String),
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(text: &str) -> Result<StoreKind, String> {
        if text == "memory" {
            return Ok(StoreKind::Memory);
        }
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
            return Err(format!(
                "unknown store {:?}: use memory, redis://HOST:PORT, rediss://HOST:PORT or redis+unix:///PATH",
                crate::terminal::escape_controls(text)
            ));
        }
        ::redis::Client::open(text)
            .map_err(|error| format!("bad store address: {}", error.category()))?;
        Ok(StoreKind::Redis(text.to_owned()))
    }
}

/// The store `kind` names, for one instance. A Redis store serves once it reaches Redis
/// (until then, and whenever it cannot, it refuses and `health` says why); its
/// background tasks end with `shutdown`.
pub fn open(
    kind: &StoreKind,
    ca: Option<&[u8]>,
    limits: StoreLimits,
    shutdown: &tokio_util::sync::CancellationToken,
) -> std::sync::Arc<dyn Store> {
    match kind {
        StoreKind::Memory => std::sync::Arc::new(memory::MemoryStore::new(limits)),
        StoreKind::Redis(url) => redis::RedisStore::start(url, ca, limits, shutdown),
    }
}

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
    async fn allocate(&self, holder: Holder) -> Result<Option<u32>, Unavailable>;
    async fn claim(&self, nameplate: u32, claimer: ConnRef) -> Result<Claim, Unavailable>;
    async fn put_back(&self, nameplate: u32, holder: Holder, claimer: ConnRef);
    /// Moves a waiting nameplate to `conn` if `reclaim` is its holder's: how long it
    /// still waits, or `None` (`SlotTable::reclaim`).
    async fn reclaim(
        &self,
        nameplate: u32,
        reclaim: ReclaimHash,
        conn: ConnRef,
    ) -> Result<Option<std::time::Duration>, Unavailable>;
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
    /// `conn` watches `channels`; returns those a sender waits on already, or `Ok(None)`
    /// when full.
    async fn watch(
        &self,
        channels: &[String],
        conn: ConnRef,
    ) -> Result<Option<Vec<String>>, Unavailable>;
    async fn unwatch(&self, channels: &[String], conn: ConnRef);
    /// Who watches `channel` (to knock when a sender waits there).
    async fn watcher(&self, channel: &str) -> Option<ConnRef>;
    async fn leave_rejoin(&self, channel: &str, conn: ConnRef);
}

/// A random id for this instance's run.
pub fn instance_id() -> u64 {
    rand::random::<u64>() >> 1 | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_memory_or_a_redis_url() {
        assert_eq!("memory".parse(), Ok(StoreKind::Memory));
        for url in [
            "redis://10.0.0.5:6379",
            "rediss://redis.example.org:6380/2",
            "redis+unix:///run/redis/redis.sock",
        ] {
            assert_eq!(url.parse(), Ok(StoreKind::Redis(url.to_owned())), "{url}");
        }
        for bad in ["", "mem", "mongodb://x", "http://redis:6379", "redis:/x"] {
            let error = bad.parse::<StoreKind>().unwrap_err();
            assert!(error.contains("redis://"), "{bad}: {error}");
        }
    }
}
