//! The rendezvous's slot table: which nameplates are open, waiting, paired or burned, and
//! who waits on which rejoin channel. Pure: the caller passes the time and the randomness
//! in, and gets back who to tell (a [`ConnRef`]), never a channel. The memory store keeps
//! one of these under a lock; the Redis store keeps the same states as keys with a TTL
//! (`store/redis.rs`), so the two behave alike.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::bus::ConnRef;
use super::pair::nameplate_space;

/// Time an entry outlives the deadline its connection keeps itself, so the table never
/// forgets a slot before its holder gives up on it.
pub const GRACE: Duration = Duration::from_secs(5);

/// Why a nameplate was burned; a later claim of it is told accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurnReason {
    /// Claimed by someone who did not complete the key exchange: a claim hears `abandoned`.
    Abandoned,
    /// A side's key confirmation failed: the code is spent, a claim hears `unknown_nameplate`.
    WrongCode,
}

/// What lets an allocator that lost its connection take its nameplate back on a new one
/// (on another instance, when its own died): the hash of a token only it was given. The
/// store keeps the hash; the token never leaves the connection that allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimHash(pub [u8; 16]);

impl ReclaimHash {
    pub fn of(token: &str) -> ReclaimHash {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(token.as_bytes());
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&digest[..16]);
        ReclaimHash(hash)
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<ReclaimHash> {
        let mut hash = [0u8; 16];
        hex::decode_to_slice(text, &mut hash).ok()?;
        Some(ReclaimHash(hash))
    }
}

/// A fresh reclaim token (hex, given to the allocator) and its hash (kept by the store).
pub fn reclaim_token(rng: &mut impl Rng) -> (zeroize::Zeroizing<String>, ReclaimHash) {
    let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
    rng.fill(&mut bytes[..]);
    let token = zeroize::Zeroizing::new(hex::encode(*bytes));
    let hash = ReclaimHash::of(&token);
    (token, hash)
}

/// Who waits in a nameplate: its connection, address and reclaim hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub conn: ConnRef,
    pub ip: IpAddr,
    pub reclaim: ReclaimHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// The allocator waits for a claim.
    Waiting { holder: Holder, until: Instant },
    /// Two parties are talking; a third claim is "crowded".
    Paired {
        waiting: ConnRef,
        claimer: ConnRef,
        until: Instant,
    },
    /// Kept until `until` so the nameplate is neither claimed again nor handed out.
    Burned { reason: BurnReason, until: Instant },
}

impl Entry {
    fn until(&self) -> Instant {
        match self {
            Entry::Waiting { until, .. }
            | Entry::Paired { until, .. }
            | Entry::Burned { until, .. } => *until,
        }
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// It waited: now paired with the claimer.
    Waiting(Holder),
    Crowded,
    Abandoned,
    /// No such nameplate, or one spent by a wrong code.
    Unknown,
}

/// One side of a job waiting on its rejoin channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub sender: bool,
    pub conn: ConnRef,
    pub ip: IpAddr,
}

/// What a rejoin found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// Nobody of the other side: wait. `replaced`: our own side's older connection,
    /// which is told it was replaced.
    Wait { replaced: Option<ConnRef> },
    /// The other side waited: it is taken off the channel, to pair with.
    Meet(Waiter),
    /// Too many channels waiting.
    Full,
}

/// How long each kind of entry lives.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A waiting slot or rejoiner, and a burned nameplate.
    pub slot: Duration,
    /// A pair.
    pub pair: Duration,
}

pub struct SlotTable {
    max: usize,
    lifetimes: Lifetimes,
    nameplates: HashMap<u32, Entry>,
    rejoin: HashMap<String, (Waiter, Instant)>,
}

impl SlotTable {
    /// At most `max` nameplates (burned ones included) and `max` rejoin channels.
    pub fn new(max: usize, lifetimes: Lifetimes) -> SlotTable {
        SlotTable {
            max,
            lifetimes,
            nameplates: HashMap::new(),
            rejoin: HashMap::new(),
        }
    }

    /// Nameplates held (waiting, paired or burned): what sizes the nameplate space.
    pub fn open(&self) -> usize {
        self.nameplates.len()
    }

    /// A fresh nameplate for `conn` to wait in, drawn at random from
    /// `pair::nameplate_space`; `None` when the table is full.
    pub fn allocate(&mut self, holder: Holder, now: Instant, rng: &mut impl Rng) -> Option<u32> {
        if self.nameplates.len() >= self.max {
            self.nameplates.retain(|_, entry| entry.until() > now);
        }
        if self.nameplates.len() >= self.max {
            return None;
        }
        let nameplate = free_nameplate(self.nameplates.len(), rng, |n| {
            self.nameplates.contains_key(&n)
        });
        let until = now + self.lifetimes.slot + GRACE;
        self.nameplates
            .insert(nameplate, Entry::Waiting { holder, until });
        Some(nameplate)
    }

    /// Claims `nameplate` for `claimer`: a waiting one becomes paired at once, so only one
    /// claim ever gets it.
    pub fn claim(&mut self, nameplate: u32, claimer: ConnRef, now: Instant) -> Claim {
        let Some(entry) = self.nameplates.get_mut(&nameplate) else {
            return Claim::Unknown;
        };
        if entry.until() <= now {
            self.nameplates.remove(&nameplate);
            return Claim::Unknown;
        }
        match *entry {
            Entry::Waiting { holder, .. } => {
                *entry = Entry::Paired {
                    waiting: holder.conn,
                    claimer,
                    until: now + self.lifetimes.pair + GRACE,
                };
                Claim::Waiting(holder)
            }
            Entry::Paired { .. } => Claim::Crowded,
            Entry::Burned {
                reason: BurnReason::Abandoned,
                ..
            } => Claim::Abandoned,
            Entry::Burned {
                reason: BurnReason::WrongCode,
                ..
            } => Claim::Unknown,
        }
    }

    /// A claim that could not go on (its pair was refused): the nameplate waits again.
    pub fn put_back(&mut self, nameplate: u32, holder: Holder, claimer: ConnRef, now: Instant) {
        if let Some(entry) = self.nameplates.get_mut(&nameplate)
            && matches!(entry, Entry::Paired { waiting: w, claimer: c, .. } if *w == holder.conn && *c == claimer)
        {
            *entry = Entry::Waiting {
                holder,
                until: now + self.lifetimes.slot + GRACE,
            };
        }
    }

    /// Moves a waiting nameplate to `conn`, when `reclaim` is its holder's hash: the
    /// allocator came back on a new connection. Returns how long it still waits; `None`
    /// when it no longer waits (claimed, burned, expired) or the hash is not its.
    pub fn reclaim(
        &mut self,
        nameplate: u32,
        reclaim: ReclaimHash,
        conn: ConnRef,
        now: Instant,
    ) -> Option<Duration> {
        match self.nameplates.get_mut(&nameplate) {
            Some(Entry::Waiting { holder, until }) if *until > now && holder.reclaim == reclaim => {
                holder.conn = conn;
                Some(until.saturating_duration_since(now + GRACE))
            }
            _ => None,
        }
    }

    /// Burns a paired nameplate that `member` is part of; otherwise the code is gone anyway.
    pub fn burn(&mut self, nameplate: u32, member: ConnRef, reason: BurnReason, now: Instant) {
        if let Some(entry) = self.nameplates.get_mut(&nameplate)
            && matches!(entry, Entry::Paired { waiting, claimer, .. } if *waiting == member || *claimer == member)
        {
            *entry = Entry::Burned {
                reason,
                until: now + self.lifetimes.slot,
            };
        }
    }

    /// `member` is done with `nameplate`: its waiting slot or its pair is forgotten; a
    /// burned entry stays until it expires, and someone else's entry is left alone.
    pub fn release(&mut self, nameplate: u32, member: ConnRef) {
        let ours = match self.nameplates.get(&nameplate) {
            Some(Entry::Waiting { holder, .. }) => holder.conn == member,
            Some(Entry::Paired {
                waiting, claimer, ..
            }) => *waiting == member || *claimer == member,
            _ => false,
        };
        if ours {
            self.nameplates.remove(&nameplate);
        }
    }

    /// `conn` waits on `channel` as the sender or the receiver of a job.
    pub fn rejoin(
        &mut self,
        channel: &str,
        sender: bool,
        conn: ConnRef,
        ip: IpAddr,
        now: Instant,
    ) -> Rejoin {
        let mut replaced = None;
        match self.rejoin.remove(channel) {
            Some((other, until)) if until > now && other.sender != sender => {
                return Rejoin::Meet(other);
            }
            // Our own side again (it lost its connection): the newer wins.
            Some((stale, until)) if until > now => replaced = Some(stale.conn),
            _ => {}
        }
        if replaced.is_none() && self.rejoin.len() >= self.max {
            self.rejoin.retain(|_, (_, until)| *until > now);
            if self.rejoin.len() >= self.max {
                return Rejoin::Full;
            }
        }
        let until = now + self.lifetimes.slot + GRACE;
        self.rejoin
            .insert(channel.to_owned(), (Waiter { sender, conn, ip }, until));
        Rejoin::Wait { replaced }
    }

    /// A met waiter whose pair was refused waits again, unless its place was taken.
    pub fn put_back_rejoin(&mut self, channel: &str, waiter: Waiter, now: Instant) {
        if !self.rejoin.contains_key(channel) {
            let until = now + self.lifetimes.slot + GRACE;
            self.rejoin.insert(channel.to_owned(), (waiter, until));
        }
    }

    /// Whether a sender waits on `channel` now (a watch arriving knocks for it).
    pub fn sender_waits(&self, channel: &str, now: Instant) -> bool {
        self.rejoin
            .get(channel)
            .is_some_and(|(w, until)| w.sender && *until > now)
    }

    /// `conn` stops waiting on `channel` (a newer connection of its side may hold it now).
    pub fn leave_rejoin(&mut self, channel: &str, conn: ConnRef) {
        if self
            .rejoin
            .get(channel)
            .is_some_and(|(w, _)| w.conn == conn)
        {
            self.rejoin.remove(channel);
        }
    }
}

/// Random within a space a thousand times larger than the open nameplates
/// (`pair::nameplate_space`), never the lowest free: a sweep of small numbers finds
/// nothing, and a stale code rarely lands on someone else's new slot.
pub fn free_nameplate(open: usize, rng: &mut impl Rng, taken: impl Fn(u32) -> bool) -> u32 {
    let mut upper = nameplate_space(open);
    loop {
        // At most one in a thousand is taken: a free one comes at the first draw or so.
        for _ in 0..32 {
            let candidate = rng.gen_range(1..upper);
            if !taken(candidate) {
                return candidate;
            }
        }
        upper = upper.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn conn(id: u64) -> ConnRef {
        ConnRef { instance: 1, id }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn holder(id: u64, last: u8) -> Holder {
        Holder {
            conn: conn(id),
            ip: ip(last),
            reclaim: ReclaimHash::of(&format!("token {id}")),
        }
    }

    #[test]
    fn only_its_token_takes_a_waiting_nameplate_to_a_new_connection() {
        let (mut t, now, mut rng) = (table(10), Instant::now(), StdRng::seed_from_u64(4));
        let n = t.allocate(holder(1, 1), now, &mut rng).unwrap();
        let later = now + Duration::from_secs(60);
        let wrong = ReclaimHash::of("token 2");
        assert_eq!(t.reclaim(n, wrong, conn(7), later), None);
        let left = t.reclaim(n, ReclaimHash::of("token 1"), conn(7), later);
        assert_eq!(left, Some(SLOT - Duration::from_secs(60)));
        // The old connection's release (it noticed late) leaves the new one's slot alone.
        t.release(n, conn(1));
        assert_eq!(
            t.claim(n, conn(2), later),
            Claim::Waiting(Holder {
                conn: conn(7),
                ..holder(1, 1)
            })
        );
        // Claimed (or expired): nothing to take back.
        assert_eq!(
            t.reclaim(n, ReclaimHash::of("token 1"), conn(8), later),
            None
        );
        let m = t.allocate(holder(3, 1), now, &mut rng).unwrap();
        let expired = now + SLOT + GRACE;
        assert_eq!(
            t.reclaim(m, ReclaimHash::of("token 3"), conn(8), expired),
            None
        );
    }

    #[test]
    fn a_reclaim_token_is_random_and_only_its_hash_matches() {
        let mut rng = StdRng::seed_from_u64(5);
        let (token, hash) = reclaim_token(&mut rng);
        let (other, _) = reclaim_token(&mut rng);
        assert_eq!(token.len(), 32);
        assert_ne!(*token, *other);
        assert_eq!(ReclaimHash::of(&token), hash);
        assert_eq!(ReclaimHash::from_hex(&hash.hex()), Some(hash));
        assert_eq!(ReclaimHash::from_hex("zz"), None);
    }

    const SLOT: Duration = Duration::from_secs(600);

    fn table(max: usize) -> SlotTable {
        SlotTable::new(
            max,
            Lifetimes {
                slot: SLOT,
                pair: Duration::from_secs(660),
            },
        )
    }

    #[test]
    fn a_nameplate_is_claimed_once_then_crowded_and_freed_by_its_pair() {
        let (mut t, now, mut rng) = (table(10), Instant::now(), StdRng::seed_from_u64(1));
        let n = t.allocate(holder(1, 1), now, &mut rng).unwrap();
        assert!((1..100_000).contains(&n), "five digits while few are open");
        assert_eq!(t.claim(n, conn(2), now), Claim::Waiting(holder(1, 1)));
        assert_eq!(t.claim(n, conn(3), now), Claim::Crowded);
        t.release(n, conn(3));
        assert_eq!(t.claim(n, conn(3), now), Claim::Crowded, "not its pair");
        t.release(n, conn(2));
        assert_eq!(t.claim(n, conn(3), now), Claim::Unknown);
        assert_eq!(t.open(), 0);
        assert_eq!(t.claim(12345, conn(3), now), Claim::Unknown);
    }

    #[test]
    fn a_refused_claim_puts_the_nameplate_back_for_a_later_one() {
        let (mut t, now, mut rng) = (table(10), Instant::now(), StdRng::seed_from_u64(2));
        let n = t.allocate(holder(1, 1), now, &mut rng).unwrap();
        assert!(matches!(t.claim(n, conn(2), now), Claim::Waiting(_)));
        t.put_back(n, holder(1, 1), conn(9), now);
        assert_eq!(t.claim(n, conn(3), now), Claim::Crowded, "not that pair");
        t.put_back(n, holder(1, 1), conn(2), now);
        assert!(matches!(t.claim(n, conn(3), now), Claim::Waiting(_)));
    }

    #[test]
    fn burned_nameplates_stay_until_they_expire_and_are_not_handed_out() {
        let (mut t, now, mut rng) = (table(2), Instant::now(), StdRng::seed_from_u64(3));
        let a = t.allocate(holder(1, 1), now, &mut rng).unwrap();
        let b = t.allocate(holder(3, 1), now, &mut rng).unwrap();
        assert_ne!(a, b);
        t.claim(a, conn(2), now);
        t.claim(b, conn(4), now);
        t.burn(a, conn(9), BurnReason::Abandoned, now);
        assert_eq!(
            t.claim(a, conn(5), now),
            Claim::Crowded,
            "only a member burns"
        );
        t.burn(a, conn(2), BurnReason::Abandoned, now);
        t.burn(b, conn(3), BurnReason::WrongCode, now);
        assert_eq!(t.claim(a, conn(5), now), Claim::Abandoned);
        assert_eq!(t.claim(b, conn(5), now), Claim::Unknown);
        t.release(a, conn(1));
        assert_eq!(
            t.claim(a, conn(5), now),
            Claim::Abandoned,
            "tombstones stay"
        );
        assert!(
            t.allocate(holder(6, 1), now, &mut rng).is_none(),
            "full: burned ones count"
        );
        let later = now + SLOT;
        assert_eq!(t.claim(a, conn(5), later), Claim::Unknown, "expired");
        assert!(t.allocate(holder(6, 1), later, &mut rng).is_some());
    }

    #[test]
    fn a_waiting_slot_expires_after_its_holders_deadline() {
        let (mut t, now, mut rng) = (table(10), Instant::now(), StdRng::seed_from_u64(4));
        let n = t.allocate(holder(1, 1), now, &mut rng).unwrap();
        assert!(matches!(t.claim(n, conn(2), now + SLOT), Claim::Waiting(_)));
        let m = t.allocate(holder(3, 1), now, &mut rng).unwrap();
        assert_eq!(t.claim(m, conn(2), now + SLOT + GRACE), Claim::Unknown);
    }

    #[test]
    fn allocations_never_repeat_a_held_nameplate_and_the_space_grows() {
        let (mut t, now, mut rng) = (table(5000), Instant::now(), StdRng::seed_from_u64(5));
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            let n = t.allocate(holder(i, 1), now, &mut rng).unwrap();
            assert!(seen.insert(n), "{n} handed out twice");
        }
        assert!(seen.iter().any(|n| *n >= 1_000_000), "the space grew");
        assert!(t.allocate(holder(0, 1), now, &mut rng).is_none());
    }

    #[test]
    fn a_waiting_allocator_that_leaves_frees_only_its_own_slot() {
        let (mut t, now, mut rng) = (table(10), Instant::now(), StdRng::seed_from_u64(6));
        let n = t.allocate(holder(1, 1), now, &mut rng).unwrap();
        t.release(n, conn(2));
        assert!(matches!(t.claim(n, conn(2), now), Claim::Waiting(_)));
        let m = t.allocate(holder(3, 1), now, &mut rng).unwrap();
        t.release(m, conn(3));
        assert_eq!(t.claim(m, conn(2), now), Claim::Unknown);
    }

    #[test]
    fn rejoiners_meet_the_other_side_and_replace_their_own() {
        let (mut t, now) = (table(2), Instant::now());
        let ch = "ab".repeat(32);
        assert_eq!(
            t.rejoin(&ch, true, conn(1), ip(1), now),
            Rejoin::Wait { replaced: None }
        );
        assert_eq!(
            t.rejoin(&ch, true, conn(2), ip(1), now),
            Rejoin::Wait {
                replaced: Some(conn(1))
            }
        );
        t.leave_rejoin(&ch, conn(1));
        let met = t.rejoin(&ch, false, conn(3), ip(2), now);
        let Rejoin::Meet(waiter) = met else {
            panic!("{met:?}")
        };
        assert_eq!(waiter.conn, conn(2));
        assert!(waiter.sender);
        // Refused (the pair cap): the waiter waits again.
        t.put_back_rejoin(&ch, waiter, now);
        assert!(matches!(
            t.rejoin(&ch, false, conn(4), ip(2), now),
            Rejoin::Meet(_)
        ));
        assert_eq!(
            t.rejoin(&ch, false, conn(5), ip(2), now),
            Rejoin::Wait { replaced: None }
        );
        t.leave_rejoin(&ch, conn(5));
        assert_eq!(
            t.rejoin(&ch, true, conn(6), ip(2), now),
            Rejoin::Wait { replaced: None }
        );
    }

    #[test]
    fn rejoin_channels_are_capped_and_expire() {
        let (mut t, now) = (table(2), Instant::now());
        let ch = |c: char| c.to_string().repeat(64);
        assert!(matches!(
            t.rejoin(&ch('a'), true, conn(1), ip(1), now),
            Rejoin::Wait { .. }
        ));
        assert!(matches!(
            t.rejoin(&ch('b'), true, conn(2), ip(1), now),
            Rejoin::Wait { .. }
        ));
        assert_eq!(t.rejoin(&ch('c'), true, conn(3), ip(1), now), Rejoin::Full);
        let later = now + SLOT + GRACE;
        assert_eq!(
            t.rejoin(&ch('a'), false, conn(4), ip(1), later),
            Rejoin::Wait { replaced: None },
            "an expired waiter is not met"
        );
        assert!(matches!(
            t.rejoin(&ch('c'), true, conn(3), ip(1), later),
            Rejoin::Wait { .. }
        ));
    }
}
