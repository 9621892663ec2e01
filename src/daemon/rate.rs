//! A job's transfer rate as people expect to read it: bytes the receiver acknowledged per
//! second over the last few seconds, counted from when data started to move. Time spent
//! before that (at the receiver's question, connecting, resuming) and bytes that were
//! already there (a resumed transfer's verified prefix) never count. Pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Shortest span a rate is computed over; below it there is none yet.
const MIN_SPAN: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct RateMeter {
    /// (when, bytes done then), oldest first; the first is the baseline.
    samples: VecDeque<(Instant, u64)>,
    /// Whether data has moved in this run (before that, waiting does not count; after,
    /// a stall does).
    moved: bool,
    /// The report just before data first moved in this run: (when, bytes done then).
    started: Option<(Instant, u64)>,
}

impl RateMeter {
    /// A progress report: `bytes_done` at `now`. Returns the rate in bytes per second once
    /// data has moved for at least half a second.
    /// A new run of the job begins (it resumes): what came before no longer counts.
    pub fn restart(&mut self) {
        self.samples.clear();
        self.moved = false;
        self.started = None;
    }

    /// How long data has moved in this run, and how many bytes, as of `now`/`bytes_done`.
    pub fn active(&self, now: Instant, bytes_done: u64) -> Option<(Duration, u64)> {
        let (since, from) = self.started?;
        Some((
            now.saturating_duration_since(since),
            bytes_done.saturating_sub(from),
        ))
    }

    pub fn observe(&mut self, now: Instant, bytes_done: u64) -> Option<u64> {
        match self.samples.back() {
            // Going back, or silent for a whole window (a new run after an interruption,
            // starting from its verified prefix): a new baseline.
            Some(&(when, last))
                if bytes_done < last || now.saturating_duration_since(when) >= RATE_WINDOW =>
            {
                self.restart()
            }
            // Nothing has moved yet: the latest report is the baseline, so waiting does
            // not count.
            Some(&(_, last)) if bytes_done == last && !self.moved => self.samples.clear(),
            Some(&(when, last)) if bytes_done > last => {
                if !self.moved {
                    self.started = Some((when, last));
                }
                self.moved = true;
            }
            _ => {}
        }
        self.samples.push_back((now, bytes_done));
        // Keep one sample at or before the window's start as the baseline.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let &(start, first) = self.samples.front()?;
        let span = now.saturating_duration_since(start);
        if span < MIN_SPAN || bytes_done == first && self.samples.len() < 2 {
            return None;
        }
        Some(((bytes_done - first) as f64 / span.as_secs_f64()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn waiting_before_data_moves_does_not_count() {
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        // Thirty seconds at the receiver's question, reporting zero.
        for ms in (0..30_000).step_by(200) {
            assert_eq!(meter.observe(at(t0, ms), 0), None);
        }
        // Then 64 MiB/s.
        let mut rate = None;
        for step in 1..=10u64 {
            rate = meter.observe(at(t0, 30_000 + step * 100), step * 64 * MIB / 10);
        }
        // The last zero report before data (up to one report interval early) is the
        // baseline: within a fifth of the true 64 MiB/s.
        let rate = rate.unwrap();
        assert!((52 * MIB..=68 * MIB).contains(&rate), "{rate}");
    }

    #[test]
    fn the_active_time_starts_at_the_last_report_before_data_moved() {
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        for ms in (0..3000).step_by(200) {
            meter.observe(at(t0, ms), 0);
        }
        assert_eq!(meter.active(at(t0, 3000), 0), None);
        meter.observe(at(t0, 3000), 10 * MIB);
        meter.observe(at(t0, 3800), 32 * MIB);
        let (took, moved) = meter.active(at(t0, 3800), 32 * MIB).unwrap();
        assert_eq!(took, Duration::from_millis(1000));
        assert_eq!(moved, 32 * MIB);
    }

    #[test]
    fn a_resumed_prefix_is_not_taken_for_speed() {
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        meter.observe(t0, 0);
        meter.observe(at(t0, 1000), 10 * MIB);
        // Resumed at 2 GiB already verified, then 10 MiB/s; whether the job said so or
        // not, the verified prefix is no speed.
        assert_eq!(meter.observe(at(t0, 60_000), 2048 * MIB), None);
        let mut told = RateMeter::default();
        told.observe(t0, 0);
        told.observe(at(t0, 1000), 10 * MIB);
        told.restart();
        assert_eq!(told.observe(at(t0, 1200), 2048 * MIB), None);
        let rate = meter
            .observe(at(t0, 61_000), 2048 * MIB + 10 * MIB)
            .unwrap();
        assert!((9 * MIB..=11 * MIB).contains(&rate), "{rate}");
    }

    #[test]
    fn the_rate_follows_the_last_seconds_and_a_stall_brings_it_down() {
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        let mut bytes = 0;
        for second in 1..=20 {
            bytes += 100 * MIB;
            meter.observe(at(t0, second * 1000), bytes);
        }
        for second in 21..=40 {
            bytes += 10 * MIB;
            meter.observe(at(t0, second * 1000), bytes);
        }
        let slow = meter.observe(at(t0, 40_500), bytes + 5 * MIB).unwrap();
        assert!((9 * MIB..=12 * MIB).contains(&slow), "{slow}");
        // Stalled for a whole window, the receiver still reporting: the rate falls to zero.
        let mut stalled = None;
        for ms in (41_000..=47_000).step_by(200) {
            stalled = meter.observe(at(t0, ms), bytes + 5 * MIB);
        }
        assert_eq!(stalled, Some(0));
    }
}
