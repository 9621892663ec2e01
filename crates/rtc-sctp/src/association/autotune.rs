//! Receive-window autotuning: the window advertised to the peer grows with what the
//! application actually consumes per round trip, up to a cap, in the manner of Linux's
//! TCP receive buffer autotuning (dynamic right-sizing). A fixed window caps a transfer
//! at `window / RTT` whatever the path; a window sized for the longest path wastes memory
//! a slow reader could be made to hold. Growing only when the reader keeps up gives a
//! long fat path the window it needs and a slow reader no more than it uses.
//!
//! Pure: fed the bytes read and the time of each inbound packet, it answers with a new
//! window when one is due.

use std::time::{Duration, Instant};

/// How much larger than one round trip's consumption the window is made: the sender's
/// window (BBR keeps two bandwidth-delay products in flight) must not be the receiver's
/// limit.
const HEADROOM: u64 = 2;

#[derive(Debug, Default)]
pub(crate) struct WindowTuner {
    /// Start of the current measurement: the first inbound packet after the last one.
    epoch_start: Option<Instant>,
    /// Bytes the application read since `epoch_start`.
    consumed: u64,
}

impl WindowTuner {
    /// The application took `bytes` out of the receive buffer.
    pub(crate) fn on_read(&mut self, bytes: usize) {
        self.consumed = self.consumed.saturating_add(bytes as u64);
    }

    /// An inbound packet at `now`. Once a round trip (`srtt`, zero while unknown) has
    /// passed since the measurement began, returns the window to advertise if it should
    /// grow beyond `window`: twice the bytes consumed per round trip, at most `cap`.
    pub(crate) fn on_packet(
        &mut self,
        now: Instant,
        srtt: Duration,
        window: u32,
        cap: u32,
    ) -> Option<u32> {
        let start = *self.epoch_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if srtt.is_zero() || elapsed < srtt {
            return None;
        }
        // Per round trip: a measurement that ran long (an idle gap) counts for less.
        let per_rtt = (u128::from(self.consumed) * srtt.as_nanos() / elapsed.as_nanos().max(1))
            .min(u128::from(u64::MAX)) as u64;
        self.epoch_start = Some(now);
        self.consumed = 0;
        let target = per_rtt.saturating_mul(HEADROOM).min(u64::from(cap)) as u32;
        (target > window).then_some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1024 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_reader_that_takes_a_whole_window_per_round_trip_doubles_it() {
        let mut tuner = WindowTuner::default();
        let t0 = Instant::now();
        assert_eq!(tuner.on_packet(t0, ms(100), MIB, 16 * MIB), None);
        tuner.on_read(MIB as usize);
        assert_eq!(
            tuner.on_packet(t0 + ms(100), ms(100), MIB, 16 * MIB),
            Some(2 * MIB)
        );
    }

    #[test]
    fn nothing_grows_before_a_round_trip_or_without_one() {
        let mut tuner = WindowTuner::default();
        let t0 = Instant::now();
        tuner.on_packet(t0, ms(100), MIB, 16 * MIB);
        tuner.on_read(4 * MIB as usize);
        assert_eq!(tuner.on_packet(t0 + ms(50), ms(100), MIB, 16 * MIB), None);
        let mut unknown = WindowTuner::default();
        unknown.on_packet(t0, Duration::ZERO, MIB, 16 * MIB);
        unknown.on_read(4 * MIB as usize);
        assert_eq!(
            unknown.on_packet(t0 + ms(500), Duration::ZERO, MIB, 16 * MIB),
            None
        );
    }

    #[test]
    fn a_slow_reader_or_an_idle_gap_does_not_grow_it() {
        let mut tuner = WindowTuner::default();
        let t0 = Instant::now();
        tuner.on_packet(t0, ms(100), MIB, 16 * MIB);
        tuner.on_read(MIB as usize / 4);
        assert_eq!(tuner.on_packet(t0 + ms(100), ms(100), MIB, 16 * MIB), None);
        // A whole window, but over ten round trips.
        tuner.on_read(MIB as usize);
        assert_eq!(tuner.on_packet(t0 + ms(1100), ms(100), MIB, 16 * MIB), None);
    }

    #[test]
    fn the_cap_holds() {
        let mut tuner = WindowTuner::default();
        let t0 = Instant::now();
        tuner.on_packet(t0, ms(10), MIB, 3 * MIB);
        tuner.on_read(64 * MIB as usize);
        assert_eq!(
            tuner.on_packet(t0 + ms(10), ms(10), MIB, 3 * MIB),
            Some(3 * MIB)
        );
        tuner.on_read(64 * MIB as usize);
        assert_eq!(tuner.on_packet(t0 + ms(20), ms(10), 3 * MIB, 3 * MIB), None);
    }
}
