//! Per-address limits for the rendezvous: concurrent and paired connections, and token
//! buckets for allocations and claims; and the server-wide budget for claims of nameplates
//! that do not exist. Pure: the caller passes the time in.
//!
//! An "address" is an IPv4 address or an IPv6 /64: one host commonly holds a whole /64,
//! so counting each /128 would give it billions of allowances (issue #23).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Requests per minute with a burst of the same size.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(capacity),
            updated: now,
        }
    }

    fn take(&mut self, per_minute: u32, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.updated).as_secs_f64()
            * f64::from(per_minute)
            / 60.0;
        self.tokens = (self.tokens + refill).min(f64::from(per_minute));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PerAddressLimits {
    pub connections: usize,
    /// Connections in a pair at once. Paired connections never give way to newcomers, so
    /// without this cap a few addresses could pair with themselves and fill the server.
    pub paired: usize,
    pub allocations_per_minute: u32,
    pub claims_per_minute: u32,
}

impl Default for PerAddressLimits {
    fn default() -> Self {
        PerAddressLimits {
            connections: 32,
            paired: 16,
            allocations_per_minute: 30,
            claims_per_minute: 30,
        }
    }
}

/// The unit limits count by: an IPv4 address, or the /64 of an IPv6 one (an IPv4-mapped
/// IPv6 address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for Origin {
    fn from(ip: IpAddr) -> Origin {
        match ip {
            IpAddr::V4(v4) => Origin::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Origin::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Origin::V6Prefix(prefix)
                }
            },
        }
    }
}

struct Address {
    connections: usize,
    paired: usize,
    /// When it last claimed a nameplate that does not exist.
    missed: Option<Instant>,
    allocations: Bucket,
    claims: Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allocate,
    Claim,
}

/// Entries kept before idle ones are swept, so a scan from many addresses stays bounded.
const SWEEP_AT: usize = 4096;

pub struct AddressTable {
    limits: PerAddressLimits,
    addresses: HashMap<Origin, Address>,
}

impl AddressTable {
    pub fn new(limits: PerAddressLimits) -> AddressTable {
        AddressTable {
            limits,
            addresses: HashMap::new(),
        }
    }

    /// Registers a connection from `ip`, or refuses it when that address has too many.
    pub fn connect(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.addresses.len() >= SWEEP_AT {
            self.sweep(now);
        }
        let limits = self.limits;
        let entry = self.addresses.entry(ip.into()).or_insert_with(|| Address {
            connections: 0,
            paired: 0,
            missed: None,
            allocations: Bucket::full(limits.allocations_per_minute, now),
            claims: Bucket::full(limits.claims_per_minute, now),
        });
        if entry.connections >= limits.connections {
            return false;
        }
        entry.connections += 1;
        true
    }

    pub fn disconnect(&mut self, ip: IpAddr) {
        if let Some(entry) = self.addresses.get_mut(&ip.into()) {
            entry.connections = entry.connections.saturating_sub(1);
        }
    }

    /// Counts one more paired connection for each of `ips` (both sides of a new pair,
    /// which may share an address), or none and `false` if any would pass its cap.
    pub fn pair(&mut self, ips: &[IpAddr]) -> bool {
        let cap = self.limits.paired;
        let mut wanted: HashMap<Origin, usize> = HashMap::new();
        for ip in ips {
            *wanted.entry((*ip).into()).or_default() += 1;
        }
        let fits = wanted.iter().all(|(origin, more)| {
            self.addresses
                .get(origin)
                .is_some_and(|a| a.paired + more <= cap)
        });
        if fits {
            for (origin, more) in wanted {
                if let Some(entry) = self.addresses.get_mut(&origin) {
                    entry.paired += more;
                }
            }
        }
        fits
    }

    /// Whether `ip` claimed a missing nameplate within [`MISS_MEMORY`].
    pub fn missed_lately(&self, ip: IpAddr, now: Instant) -> bool {
        self.addresses
            .get(&ip.into())
            .and_then(|a| a.missed)
            .is_some_and(|at| now.saturating_duration_since(at) < MISS_MEMORY)
    }

    /// `ip` claimed a nameplate that does not exist.
    pub fn note_miss(&mut self, ip: IpAddr, now: Instant) {
        if let Some(entry) = self.addresses.get_mut(&ip.into()) {
            entry.missed = Some(now);
        }
    }

    /// A paired connection from `ip` ended.
    pub fn unpair(&mut self, ip: IpAddr) {
        if let Some(entry) = self.addresses.get_mut(&ip.into()) {
            entry.paired = entry.paired.saturating_sub(1);
        }
    }

    /// Whether `ip` may allocate or claim now; spends a token if so.
    pub fn allow(&mut self, ip: IpAddr, action: Action, now: Instant) -> bool {
        let limits = self.limits;
        match self.addresses.get_mut(&ip.into()) {
            Some(entry) => match action {
                Action::Allocate => entry.allocations.take(limits.allocations_per_minute, now),
                Action::Claim => entry.claims.take(limits.claims_per_minute, now),
            },
            None => false,
        }
    }

    /// Forgets addresses with no connection whose buckets have refilled.
    fn sweep(&mut self, now: Instant) {
        self.addresses.retain(|_, a| {
            a.connections > 0
                || now.saturating_duration_since(a.allocations.updated.min(a.claims.updated))
                    < Duration::from_secs(60)
                || a.missed
                    .is_some_and(|at| now.saturating_duration_since(at) < MISS_MEMORY)
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.addresses.len()
    }
}

/// How long an address that claimed a missing nameplate counts as sweeping.
pub const MISS_MEMORY: Duration = Duration::from_secs(600);

/// Claims of nameplates that do not exist, server-wide. A sweep from many addresses
/// claims nameplate after nameplate, and each claim that finds a live one costs its users
/// their code, so the whole world shares a budget of misses a minute (`general`). Once it
/// is spent, an address that missed within [`MISS_MEMORY`] is refused ("busy") until it
/// refills; any other address draws on a second budget of the same size (`fresh`), so a
/// flood from a few addresses never stops an honest receiver. A sweep from many addresses
/// spends both, and then every claim hears "busy" until they refill: its receiver tries
/// again a minute later and finds the code, which the sweep would otherwise have burned.
/// Cost of a sweep: docs/SECURITY.md.
#[derive(Debug)]
pub struct MissBudget {
    general: Bucket,
    fresh: Bucket,
}

impl MissBudget {
    pub fn new(per_minute: u32, now: Instant) -> MissBudget {
        MissBudget {
            general: Bucket::full(per_minute, now),
            fresh: Bucket::full(per_minute, now),
        }
    }

    /// Whether a claim from an address that did (`missed_lately`) or did not miss lately
    /// may look its nameplate up now, at `per_minute` misses a minute (which grows with
    /// the open nameplates: `pair::misses_per_minute`). Looking spends nothing.
    pub fn open(&mut self, per_minute: u32, missed_lately: bool, now: Instant) -> bool {
        peek(&mut self.general, per_minute, now)
            || (!missed_lately && peek(&mut self.fresh, per_minute, now))
    }

    /// A claim found no such nameplate: spends from the general budget, else the fresh.
    pub fn missed(&mut self, per_minute: u32, now: Instant) {
        if !self.general.take(per_minute, now) {
            let _ = self.fresh.take(per_minute, now);
        }
    }
}

/// Whether `bucket` holds a token, refilled to `now`, without spending it.
fn peek(bucket: &mut Bucket, per_minute: u32, now: Instant) -> bool {
    if bucket.take(per_minute, now) {
        bucket.tokens += 1.0;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connections_are_capped_per_address() {
        let limits = PerAddressLimits {
            connections: 2,
            ..Default::default()
        };
        let mut table = AddressTable::new(limits);
        let now = Instant::now();
        assert!(table.connect(ip(1), now));
        assert!(table.connect(ip(1), now));
        assert!(
            !table.connect(ip(1), now),
            "third connection from one address"
        );
        assert!(table.connect(ip(2), now), "other addresses are unaffected");
        table.disconnect(ip(1));
        assert!(table.connect(ip(1), now));
    }

    #[test]
    fn buckets_allow_a_burst_then_refill_over_time() {
        let limits = PerAddressLimits {
            connections: 10,
            paired: 1,
            allocations_per_minute: 3,
            claims_per_minute: 1,
        };
        let mut table = AddressTable::new(limits);
        let start = Instant::now();
        assert!(table.connect(ip(1), start));
        for _ in 0..3 {
            assert!(table.allow(ip(1), Action::Allocate, start));
        }
        assert!(!table.allow(ip(1), Action::Allocate, start), "burst spent");
        assert!(
            table.allow(ip(1), Action::Claim, start),
            "claims have their own bucket"
        );
        assert!(!table.allow(ip(1), Action::Claim, start));
        assert!(!table.allow(ip(1), Action::Allocate, start + Duration::from_secs(10)));
        assert!(
            table.allow(ip(1), Action::Allocate, start + Duration::from_secs(21)),
            "one token per 20 s"
        );
        assert!(
            !table.allow(ip(9), Action::Allocate, start),
            "unknown addresses get nothing"
        );
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address_and_pairs_are_capped() {
        let limits = PerAddressLimits {
            connections: 3,
            paired: 2,
            ..Default::default()
        };
        let mut table = AddressTable::new(limits);
        let now = Instant::now();
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for i in 1..=3 {
            assert!(table.connect(host(i), now));
        }
        assert!(!table.connect(host(4), now), "another /128 of the same /64");
        assert!(table.connect(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), now));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(table.connect(ip(1), now));
        assert!(table.connect(mapped, now));
        assert!(table.pair(&[ip(1), mapped]), "a pair within one address");
        assert!(
            !table.pair(&[ip(1), host(1)]),
            "its cap reached, nothing counted"
        );
        assert!(table.pair(&[host(1), host(2)]));
        table.unpair(ip(1));
        assert!(table.pair(&[ip(1)]));
        assert!(!table.pair(&[ip(9)]), "unknown addresses get nothing");
    }

    #[test]
    fn misses_are_budgeted_server_wide() {
        let start = Instant::now();
        let mut budget = MissBudget::new(3, start);
        for _ in 0..3 {
            assert!(budget.open(3, true, start));
            budget.missed(3, start);
        }
        assert!(
            !budget.open(3, true, start),
            "spent: a sweeping address waits"
        );
        assert!(
            budget.open(3, false, start),
            "another address draws on the fresh budget"
        );
        for _ in 0..3 {
            budget.missed(3, start);
        }
        assert!(
            !budget.open(3, false, start),
            "both spent: every claim waits"
        );
        assert!(!budget.open(3, true, start + Duration::from_secs(19)));
        let later = start + Duration::from_secs(21);
        assert!(budget.open(3, true, later), "one per 20 s");
        assert!(budget.open(3, true, later), "looking is free");
    }

    #[test]
    fn an_address_that_missed_is_remembered_for_a_while() {
        let mut table = AddressTable::new(PerAddressLimits::default());
        let now = Instant::now();
        assert!(table.connect(ip(1), now));
        assert!(!table.missed_lately(ip(1), now));
        table.note_miss(ip(1), now);
        assert!(table.missed_lately(ip(1), now + MISS_MEMORY - Duration::from_secs(1)));
        assert!(!table.missed_lately(ip(1), now + MISS_MEMORY));
        assert!(!table.missed_lately(ip(2), now));
    }

    #[test]
    fn idle_addresses_are_swept() {
        let mut table = AddressTable::new(PerAddressLimits::default());
        let start = Instant::now();
        for i in 0..SWEEP_AT {
            let addr = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            assert!(table.connect(addr, start));
            table.disconnect(addr);
        }
        assert!(table.connect(ip(200), start + Duration::from_secs(120)));
        assert_eq!(table.len(), 1);
    }
}
