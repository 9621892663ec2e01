//! What the rendezvous allows one pair of connections, and the size of the
//! nameplate space. Pure: the server passes the time and the counts in.
//!
//! A pair exists for signalling: seconds and kilobytes for a transfer, up to ten minutes
//! of keepalives while two people compare a pairing's fingerprints. Anything beyond that
//! is someone using the server as a relay or holding its places (issue #23), so every
//! pair has an absolute lifetime and a budget per side.

use std::time::Duration;

/// Relays each side sends before its key is confirmed: a SPAKE2 message (or a session
/// nonce, on a rejoin channel or at a mailbox) and a confirmation tag.
pub const EXCHANGE_RELAYS: u8 = 2;

/// How long a pair may stay paired, however busy: the longest honest use is a device
/// pairing waiting for both people's decision (`daemon::pairing::DECISION_LIMIT`, 10 min).
pub const PAIR_LIFETIME: Duration = Duration::from_secs(11 * 60);

/// What one side of a pair may relay in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayBudget {
    pub messages: u32,
    pub bytes: usize,
}

impl Default for RelayBudget {
    /// A transfer's signalling is a few dozen messages of a few KiB (offer, answer,
    /// candidates, a restart or two); a pairing adds one keepalive every 45 s.
    fn default() -> Self {
        RelayBudget {
            messages: 256,
            bytes: 256 * 1024,
        }
    }
}

impl RelayBudget {
    /// Spends one message of `bytes`; `false` (and nothing spent) once it would pass.
    pub fn spend(&mut self, bytes: usize) -> bool {
        if self.messages == 0 || bytes > self.bytes {
            return false;
        }
        self.messages -= 1;
        self.bytes -= bytes;
        true
    }
}

/// Smallest nameplate space, and how many nameplates it holds per open one at least.
const MIN_SPACE: u32 = 100_000;
const SPARSITY: u64 = 1_000;

/// Nameplates are drawn at random from `1..nameplate_space(open)`: a power of ten at
/// least [`MIN_SPACE`] and [`SPARSITY`] times the open nameplates, so at most one in a
/// thousand numbers is live and a blind sweep mostly finds nothing (docs/SECURITY.md has
/// its cost). Codes stay short while few are open (five digits up to 99 open ones).
pub fn nameplate_space(open: usize) -> u32 {
    let needed = (open as u64).saturating_add(1).saturating_mul(SPARSITY);
    let mut space = u64::from(MIN_SPACE);
    while space < needed && space < u64::from(u32::MAX) / 10 {
        space *= 10;
    }
    u32::try_from(space).unwrap_or(u32::MAX)
}

/// Claims of nameplates that do not exist, server-wide, per minute: a floor, growing with
/// the open nameplates (one per ten) so honest typing mistakes on a busy server still
/// find room, while a sweep's chance of hitting a given code per minute stays at most
/// `misses / space` (with the space above, under 1 in 10,000 on a busy server).
pub fn misses_per_minute(floor: u32, open: usize) -> u32 {
    floor.max(u32::try_from(open / 10).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_space_keeps_a_thousand_numbers_per_open_nameplate() {
        assert_eq!(nameplate_space(0), 100_000);
        assert_eq!(nameplate_space(99), 100_000);
        assert_eq!(nameplate_space(100), 1_000_000);
        assert_eq!(nameplate_space(10_000), 100_000_000);
        assert!(nameplate_space(usize::MAX) > 100_000_000);
        for open in [0, 5, 99, 100, 999, 12_345] {
            assert!(u64::from(nameplate_space(open)) >= (open as u64 + 1) * SPARSITY);
        }
    }

    #[test]
    fn misses_grow_with_load_from_a_floor() {
        assert_eq!(misses_per_minute(6, 0), 6);
        assert_eq!(misses_per_minute(6, 59), 6);
        assert_eq!(misses_per_minute(6, 10_000), 1_000);
        // A sweep's chance per minute at a given code stays small at every load.
        for open in [1, 20, 99, 100, 5_000, 100_000] {
            let chance = f64::from(misses_per_minute(6, open)) / f64::from(nameplate_space(open));
            assert!(chance <= 1e-4, "{open} open: {chance}");
        }
    }

    #[test]
    fn a_budget_is_spent_by_messages_and_bytes() {
        let mut budget = RelayBudget {
            messages: 3,
            bytes: 100,
        };
        assert!(budget.spend(60));
        assert!(!budget.spend(41), "past the bytes: refused, nothing spent");
        assert!(budget.spend(40));
        assert!(
            budget.spend(0),
            "no bytes left, but a message: an empty one fits"
        );
        assert!(!budget.spend(0), "messages gone");
        let mut budget = RelayBudget {
            messages: 1,
            bytes: 100,
        };
        assert!(budget.spend(0));
        assert!(!budget.spend(0), "messages gone");
    }
}
