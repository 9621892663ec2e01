//! The store of a single rendezvous process: a [`SlotTable`] under a lock, and delivery
//! straight into this process's inboxes.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Store, StoreLimits, Unavailable};
use crate::rendezvous::bus::{ConnRef, Delivery, Event, Inbox, Inboxes, lock};
use crate::rendezvous::slots::{BurnReason, Claim, Holder, ReclaimHash, Rejoin, SlotTable, Waiter};
use crate::rendezvous::watch::WatchTable;

pub struct MemoryStore {
    instance: u64,
    table: Mutex<SlotTable>,
    watches: Mutex<WatchTable>,
    inboxes: Inboxes,
    /// Never changes: a memory store always serves.
    health: watch::Sender<Option<String>>,
}

impl MemoryStore {
    pub fn new(limits: StoreLimits) -> MemoryStore {
        MemoryStore {
            instance: super::instance_id(),
            table: Mutex::new(SlotTable::new(limits.max_slots, limits.lifetimes)),
            watches: Mutex::new(WatchTable::new(
                limits.max_slots,
                limits.lifetimes.slot + crate::rendezvous::slots::GRACE,
            )),
            inboxes: Inboxes::default(),
            health: watch::Sender::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn instance(&self) -> u64 {
        self.instance
    }

    fn register(&self, id: u64) -> Inbox {
        self.inboxes.register(id)
    }

    fn unregister(&self, id: u64) {
        self.inboxes.unregister(id);
    }

    async fn deliver(&self, to: ConnRef, from: ConnRef, event: Event) -> bool {
        to.instance == self.instance && self.inboxes.deliver(to.id, Delivery { from, event })
    }

    fn health(&self) -> watch::Receiver<Option<String>> {
        self.health.subscribe()
    }

    fn open(&self) -> usize {
        lock(&self.table).open()
    }

    async fn allocate(&self, holder: Holder) -> Result<Option<u32>, Unavailable> {
        let mut rng = rand::thread_rng();
        Ok(lock(&self.table).allocate(holder, Instant::now(), &mut rng))
    }

    async fn claim(&self, nameplate: u32, claimer: ConnRef) -> Result<Claim, Unavailable> {
        Ok(lock(&self.table).claim(nameplate, claimer, Instant::now()))
    }

    async fn put_back(&self, nameplate: u32, holder: Holder, claimer: ConnRef) {
        lock(&self.table).put_back(nameplate, holder, claimer, Instant::now());
    }

    async fn reclaim(
        &self,
        nameplate: u32,
        reclaim: ReclaimHash,
        conn: ConnRef,
    ) -> Result<Option<Duration>, Unavailable> {
        Ok(lock(&self.table).reclaim(nameplate, reclaim, conn, Instant::now()))
    }

    async fn burn(&self, nameplate: u32, member: ConnRef, reason: BurnReason) {
        lock(&self.table).burn(nameplate, member, reason, Instant::now());
    }

    async fn release(&self, nameplate: u32, member: ConnRef) {
        lock(&self.table).release(nameplate, member);
    }

    async fn rejoin(
        &self,
        channel: &str,
        sender: bool,
        conn: ConnRef,
        ip: IpAddr,
    ) -> Result<Rejoin, Unavailable> {
        Ok(lock(&self.table).rejoin(channel, sender, conn, ip, Instant::now()))
    }

    async fn put_back_rejoin(&self, channel: &str, waiter: Waiter) {
        lock(&self.table).put_back_rejoin(channel, waiter, Instant::now());
    }

    async fn leave_rejoin(&self, channel: &str, conn: ConnRef) {
        lock(&self.table).leave_rejoin(channel, conn);
    }

    async fn watch(
        &self,
        channels: &[String],
        conn: ConnRef,
    ) -> Result<Option<Vec<String>>, Unavailable> {
        let now = Instant::now();
        if !lock(&self.watches).watch(channels, conn, now) {
            return Ok(None);
        }
        let table = lock(&self.table);
        Ok(Some(
            channels
                .iter()
                .filter(|c| table.sender_waits(c, now))
                .cloned()
                .collect(),
        ))
    }

    async fn unwatch(&self, channels: &[String], conn: ConnRef) {
        lock(&self.watches).unwatch(channels, conn);
    }

    async fn watcher(&self, channel: &str) -> Option<ConnRef> {
        lock(&self.watches).watcher(channel, Instant::now())
    }
}
