//! Per-address limits for the rendezvous: concurrent connections, and token buckets for
//! allocations and claims. Pure: the caller passes the time in.

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
    pub allocations_per_minute: u32,
    pub claims_per_minute: u32,
}

impl Default for PerAddressLimits {
    fn default() -> Self {
        PerAddressLimits {
            connections: 32,
            allocations_per_minute: 30,
            claims_per_minute: 30,
        }
    }
}

struct Address {
    connections: usize,
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
    addresses: HashMap<IpAddr, Address>,
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
        let entry = self.addresses.entry(ip).or_insert_with(|| Address {
            connections: 0,
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
        if let Some(entry) = self.addresses.get_mut(&ip) {
            entry.connections = entry.connections.saturating_sub(1);
        }
    }

    /// Whether `ip` may allocate or claim now; spends a token if so.
    pub fn allow(&mut self, ip: IpAddr, action: Action, now: Instant) -> bool {
        let limits = self.limits;
        match self.addresses.get_mut(&ip) {
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
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.addresses.len()
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
