//! The store shared by several rendezvous instances: Redis (or Valkey) through the `redis`
//! crate. Each slot operation is one Lua script, so it is atomic at the engine whichever
//! instance runs it: a nameplate is handed out once (`SET NX` with a TTL), claimed once
//! (waiting → paired in one step: one PAKE attempt per code cluster-wide), and a burned one
//! stays as a tombstone until its TTL. Every entry expires by itself, so an instance that
//! dies leaves nothing behind for longer than a slot's or a pair's life.
//!
//! Events between connections on different instances go over pub/sub: each instance
//! subscribes to its own channel (`p2pd:rv:inst:<id>`) on a connection of its own and
//! publishes to the peer's. A PUBLISH that no instance received (its instance is gone)
//! counts as the peer gone.
//!
//! Fail closed: while Redis cannot be reached (a health check every second, and the
//! subscription), `health` says why, every allocation, claim and rejoin is refused with
//! that cause, and whoever waits on the store is told; it serves again by itself once
//! Redis answers.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod health;

use super::lua::{
    ALLOCATE, BURN, CLAIM, LEAVE_REJOIN, PUT_BACK_REJOIN, RECLAIM, REJOIN, RELEASE, REPLACE,
    UNWATCH, WATCH,
};
use super::{Store, StoreLimits, Unavailable};
use crate::rendezvous::bus::{ConnRef, Delivery, Event, Inbox, Inboxes, lock};
use crate::rendezvous::pair::nameplate_space;
use crate::rendezvous::slots::{BurnReason, Claim, GRACE, Holder, ReclaimHash, Rejoin, Waiter};

/// Every key and channel starts with this.
const PREFIX: &str = "p2pd:rv:";
/// How often the store's reachability is checked (and the open count refreshed).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A request to Redis that takes longer fails (as unreachable).
const COMMAND_TIME: Duration = Duration::from_secs(3);
/// Nameplates tried per allocation script; all taken (one in a thousand each) means a
/// larger space.
const CANDIDATES: usize = 4;

struct Scripts {
    allocate: Script,
    claim: Script,
    replace: Script,
    burn: Script,
    release: Script,
    rejoin: Script,
    put_back_rejoin: Script,
    leave_rejoin: Script,
    reclaim: Script,
    watch: Script,
    unwatch: Script,
}

/// An event on its way to a connection of another instance.
#[derive(Serialize, Deserialize)]
struct Envelope {
    to: u64,
    from: ConnRef,
    event: Event,
}

pub struct RedisStore {
    instance: u64,
    limits: StoreLimits,
    client: Option<redis::Client>,
    /// Made once Redis first answers; it reconnects by itself after that.
    manager: Mutex<Option<ConnectionManager>>,
    inboxes: Inboxes,
    health: watch::Sender<Option<String>>,
    open: AtomicUsize,
    scripts: Scripts,
    /// Asks for a check now (the subscription came back).
    recheck: tokio::sync::Notify,
}

impl RedisStore {
    /// A store on `url` (already checked: `StoreKind::from_str`), not serving until Redis
    /// answers and the subscription stands.
    pub fn start(
        url: &str,
        ca: Option<&[u8]>,
        limits: StoreLimits,
        shutdown: &CancellationToken,
    ) -> Arc<dyn Store> {
        // Checked when the flag was read; a store that cannot be opened only refuses.
        let opened = match ca {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            None => redis::Client::open(url),
        };
        let (client, health) = match opened {
            Ok(client) => (Some(client), "not connected to redis yet".to_owned()),
            Err(error) => (None, format!("bad store address: {}", describe(&error))),
        };
        let store = Arc::new(RedisStore {
            instance: super::instance_id(),
            limits,
            client,
            manager: Mutex::new(None),
            inboxes: Inboxes::default(),
            health: watch::Sender::new(Some(health)),
            open: AtomicUsize::new(0),
            recheck: tokio::sync::Notify::new(),
            scripts: Scripts {
                allocate: Script::new(ALLOCATE),
                claim: Script::new(CLAIM),
                replace: Script::new(REPLACE),
                burn: Script::new(BURN),
                release: Script::new(RELEASE),
                rejoin: Script::new(REJOIN),
                put_back_rejoin: Script::new(PUT_BACK_REJOIN),
                leave_rejoin: Script::new(LEAVE_REJOIN),
                reclaim: Script::new(RECLAIM),
                watch: Script::new(WATCH),
                unwatch: Script::new(UNWATCH),
            },
        });
        let (reachable_tx, reachable) = watch::channel((None::<String>, Instant::now()));
        let (subscribed_tx, subscribed) = watch::channel(None::<Instant>);
        tokio::spawn(store.clone().check(reachable_tx, shutdown.clone()));
        tokio::spawn(store.clone().subscribe(subscribed_tx, shutdown.clone()));
        tokio::spawn(store.clone().judge(reachable, subscribed, shutdown.clone()));
        store
    }

    fn channel(instance: u64) -> String {
        format!("{PREFIX}inst:{instance:x}")
    }

    fn me(conn: ConnRef) -> String {
        format!("{:x} {}", conn.instance, conn.id)
    }

    fn current_manager(&self) -> Result<ConnectionManager, String> {
        lock(&self.manager)
            .clone()
            .ok_or_else(|| "not connected to redis yet".to_owned())
    }

    /// The connection manager, made on first success.
    async fn manager(&self) -> Result<ConnectionManager, String> {
        if let Ok(manager) = self.current_manager() {
            return Ok(manager);
        }
        let Some(client) = &self.client else {
            return Err("bad store address".to_owned());
        };
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(COMMAND_TIME);
        let made = tokio::time::timeout(
            COMMAND_TIME,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(manager)) => {
                *lock(&self.manager) = Some(manager.clone());
                Ok(manager)
            }
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err("redis did not answer in time".to_owned()),
        }
    }

    /// A connection to run a request on, unless the store is known not to serve.
    fn serving(&self) -> Result<ConnectionManager, Unavailable> {
        if let Some(problem) = self.health.borrow().clone() {
            return Err(Unavailable(problem));
        }
        self.current_manager().map_err(Unavailable)
    }

    /// Runs `script` as a request: refused with the cause when it fails.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut manager = self.serving()?;
        match tokio::time::timeout(COMMAND_TIME, invocation.invoke_async(&mut manager)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Unavailable(describe(&error))),
            Err(_) => Err(Unavailable("redis did not answer in time".into())),
        }
    }

    /// Best effort after a pairing: the entry expires anyway.
    async fn tidy(&self, invocation: redis::ScriptInvocation<'_>) {
        if let Err(error) = self.run::<i64>(invocation).await {
            warn!(%error, "store update skipped; the entry will expire");
        }
    }

    fn nameplate_key(nameplate: u32) -> String {
        format!("{PREFIX}np:{nameplate}")
    }

    fn rejoin_key(channel: &str) -> String {
        format!("{PREFIX}rj:{channel}")
    }

    fn watch_key(channel: &str) -> String {
        format!("{PREFIX}wt:{channel}")
    }

    fn ms(duration: Duration) -> u64 {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }

    fn slot_ms(&self) -> u64 {
        Self::ms(self.limits.lifetimes.slot + GRACE)
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
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
        if to.instance == self.instance {
            return self.inboxes.deliver(to.id, Delivery { from, event });
        }
        let Ok(mut manager) = self.current_manager() else {
            return false;
        };
        let envelope = Envelope {
            to: to.id,
            from,
            event,
        };
        publish(&mut manager, to.instance, &envelope).await
    }

    fn health(&self) -> watch::Receiver<Option<String>> {
        self.health.subscribe()
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    async fn allocate(&self, holder: Holder) -> Result<Option<u32>, Unavailable> {
        let value = format!(
            "w {} {} {}",
            Self::me(holder.conn),
            holder.ip,
            holder.reclaim.hex()
        );
        let mut upper = nameplate_space(self.open());
        loop {
            let candidates: Vec<u32> = {
                let mut rng = rand::thread_rng();
                (0..CANDIDATES)
                    .map(|_| rand::Rng::gen_range(&mut rng, 1..upper))
                    .collect()
            };
            let mut invocation = self.scripts.allocate.prepare_invoke();
            invocation.key(format!("{PREFIX}open"));
            for nameplate in &candidates {
                invocation.key(Self::nameplate_key(*nameplate));
            }
            invocation
                .arg(now_ms())
                .arg(self.slot_ms())
                .arg(self.limits.max_slots)
                .arg(&value);
            for nameplate in &candidates {
                invocation.arg(*nameplate);
            }
            let (got, open): (i64, usize) = self.run(invocation).await?;
            self.open.store(open, Ordering::Relaxed);
            match got {
                -1 => return Ok(None),
                0 => upper = upper.saturating_mul(10),
                nameplate => return Ok(u32::try_from(nameplate).ok()),
            }
        }
    }

    async fn claim(&self, nameplate: u32, claimer: ConnRef) -> Result<Claim, Unavailable> {
        let pair_ms = Self::ms(self.limits.lifetimes.pair + GRACE);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(Self::nameplate_key(nameplate))
            .key(format!("{PREFIX}open"))
            .arg(Self::me(claimer))
            .arg(pair_ms)
            .arg(now_ms())
            .arg(nameplate);
        let found: Option<String> = self.run(invocation).await?;
        let Some(found) = found else {
            return Ok(Claim::Unknown);
        };
        let mut words = found.split(' ');
        Ok(match words.next() {
            Some("w") => match parse_holder(&mut words) {
                Some(holder) => Claim::Waiting(holder),
                None => Claim::Unknown,
            },
            Some("p") => Claim::Crowded,
            Some("b") if words.next() == Some("a") => Claim::Abandoned,
            _ => Claim::Unknown,
        })
    }

    async fn put_back(&self, nameplate: u32, holder: Holder, claimer: ConnRef) {
        let (waiting, ip, hash) = (holder.conn, holder.ip, holder.reclaim.hex());
        let paired = format!("p {} {} {ip} {hash}", Self::me(waiting), Self::me(claimer));
        let mut invocation = self.scripts.replace.prepare_invoke();
        invocation
            .key(Self::nameplate_key(nameplate))
            .key(format!("{PREFIX}open"))
            .arg(paired)
            .arg(format!("w {} {ip} {hash}", Self::me(waiting)))
            .arg(self.slot_ms())
            .arg(now_ms())
            .arg(nameplate);
        self.tidy(invocation).await;
    }

    async fn reclaim(
        &self,
        nameplate: u32,
        reclaim: ReclaimHash,
        conn: ConnRef,
    ) -> Result<Option<Duration>, Unavailable> {
        let mut invocation = self.scripts.reclaim.prepare_invoke();
        invocation
            .key(Self::nameplate_key(nameplate))
            .arg(reclaim.hex())
            .arg(Self::me(conn));
        let left: i64 = self.run(invocation).await?;
        Ok(u64::try_from(left)
            .ok()
            .map(|ms| Duration::from_millis(ms).saturating_sub(GRACE)))
    }

    async fn burn(&self, nameplate: u32, member: ConnRef, reason: BurnReason) {
        let burned = match reason {
            BurnReason::Abandoned => "b a",
            BurnReason::WrongCode => "b w",
        };
        let mut invocation = self.scripts.burn.prepare_invoke();
        invocation
            .key(Self::nameplate_key(nameplate))
            .key(format!("{PREFIX}open"))
            .arg(Self::me(member))
            .arg(burned)
            .arg(Self::ms(self.limits.lifetimes.slot))
            .arg(now_ms())
            .arg(nameplate);
        self.tidy(invocation).await;
    }

    async fn release(&self, nameplate: u32, member: ConnRef) {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(Self::nameplate_key(nameplate))
            .key(format!("{PREFIX}open"))
            .arg(Self::me(member))
            .arg(nameplate);
        self.tidy(invocation).await;
    }

    async fn rejoin(
        &self,
        channel: &str,
        sender: bool,
        conn: ConnRef,
        ip: IpAddr,
    ) -> Result<Rejoin, Unavailable> {
        let side = if sender { "s" } else { "r" };
        let mut invocation = self.scripts.rejoin.prepare_invoke();
        invocation
            .key(Self::rejoin_key(channel))
            .key(format!("{PREFIX}rejoin"))
            .arg(side)
            .arg(format!("{side} {} {ip}", Self::me(conn)))
            .arg(self.slot_ms())
            .arg(now_ms())
            .arg(self.limits.max_slots)
            .arg(channel);
        let answer: Vec<String> = self.run(invocation).await?;
        Ok(match answer.first().map(String::as_str) {
            Some("meet") => match answer.get(1).and_then(|v| parse_waiter(v)) {
                Some(other) => Rejoin::Meet(other),
                None => Rejoin::Wait { replaced: None },
            },
            Some("replaced") => Rejoin::Wait {
                replaced: answer.get(1).and_then(|v| parse_waiter(v)).map(|w| w.conn),
            },
            Some("full") => Rejoin::Full,
            _ => Rejoin::Wait { replaced: None },
        })
    }

    async fn put_back_rejoin(&self, channel: &str, waiter: Waiter) {
        let side = if waiter.sender { "s" } else { "r" };
        let mut invocation = self.scripts.put_back_rejoin.prepare_invoke();
        invocation
            .key(Self::rejoin_key(channel))
            .key(format!("{PREFIX}rejoin"))
            .arg(format!("{side} {} {}", Self::me(waiter.conn), waiter.ip))
            .arg(self.slot_ms())
            .arg(now_ms())
            .arg(channel);
        self.tidy(invocation).await;
    }

    async fn watch(
        &self,
        channels: &[String],
        conn: ConnRef,
    ) -> Result<Option<Vec<String>>, Unavailable> {
        let mut invocation = self.scripts.watch.prepare_invoke();
        for channel in channels {
            invocation.key(Self::watch_key(channel));
        }
        for channel in channels {
            invocation.key(Self::rejoin_key(channel));
        }
        invocation.arg(Self::me(conn)).arg(self.slot_ms());
        let waiting: Vec<usize> = self.run(invocation).await?;
        Ok(Some(
            waiting
                .into_iter()
                .filter_map(|i| channels.get(i.checked_sub(1)?).cloned())
                .collect(),
        ))
    }

    async fn unwatch(&self, channels: &[String], conn: ConnRef) {
        let mut invocation = self.scripts.unwatch.prepare_invoke();
        for channel in channels {
            invocation.key(Self::watch_key(channel));
        }
        invocation.arg(Self::me(conn));
        self.tidy(invocation).await;
    }

    async fn watcher(&self, channel: &str) -> Option<ConnRef> {
        let mut manager = self.current_manager().ok()?;
        let found = tokio::time::timeout(
            COMMAND_TIME,
            manager.get::<_, Option<String>>(Self::watch_key(channel)),
        )
        .await
        .ok()?
        .ok()??;
        parse_ref(&mut found.split(' '))
    }

    async fn leave_rejoin(&self, channel: &str, conn: ConnRef) {
        let mut invocation = self.scripts.leave_rejoin.prepare_invoke();
        invocation
            .key(Self::rejoin_key(channel))
            .key(format!("{PREFIX}rejoin"))
            .arg(Self::me(conn))
            .arg(channel);
        self.tidy(invocation).await;
    }
}

/// `false` when no instance received it (the peer's instance is gone) or Redis failed.
async fn publish(manager: &mut ConnectionManager, instance: u64, envelope: &Envelope) -> bool {
    let Ok(json) = serde_json::to_string(envelope) else {
        return false;
    };
    let published = tokio::time::timeout(
        COMMAND_TIME,
        manager.publish::<_, _, usize>(RedisStore::channel(instance), json),
    )
    .await;
    matches!(published, Ok(Ok(receivers)) if receivers > 0)
}

/// `inst id` (the instance in hex) from the words of an entry.
fn parse_ref<'a>(words: &mut impl Iterator<Item = &'a str>) -> Option<ConnRef> {
    let instance = u64::from_str_radix(words.next()?, 16).ok()?;
    let id = words.next()?.parse().ok()?;
    Some(ConnRef { instance, id })
}

/// A waiting entry's words after `w`: `inst id ip hash`.
fn parse_holder<'a>(words: &mut impl Iterator<Item = &'a str>) -> Option<Holder> {
    let conn = parse_ref(words)?;
    let ip = words.next()?.parse().ok()?;
    let reclaim = ReclaimHash::from_hex(words.next()?)?;
    Some(Holder { conn, ip, reclaim })
}

/// A rejoin entry: `s|r inst id ip`.
fn parse_waiter(value: &str) -> Option<Waiter> {
    let mut words = value.split(' ');
    let sender = match words.next()? {
        "s" => true,
        "r" => false,
        _ => return None,
    };
    let conn = parse_ref(&mut words)?;
    let ip = words.next()?.parse().ok()?;
    Some(Waiter { sender, conn, ip })
}

/// A Redis error in a line, without the address it was reached at (which may carry a
/// password).
fn describe(error: &redis::RedisError) -> String {
    let text = if error.is_connection_refusal() {
        "redis refused the connection".to_owned()
    } else if error.is_timeout() {
        "redis did not answer in time".to_owned()
    } else if error.is_connection_dropped() || error.is_io_error() {
        format!("connection to redis lost: {}", error.category())
    } else {
        format!("redis: {}", error.category())
    };
    crate::terminal::escape_controls(&text)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(RedisStore::ms)
        .unwrap_or(0)
}
