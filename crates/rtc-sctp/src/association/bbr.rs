//! A delivery-rate congestion controller in the style of BBR (v1, as in
//! draft-cardwell-iccrg-bbr-congestion-control-00), with its rate sampler
//! (draft-cheng-iccrg-delivery-rate-estimation). Pure: the association feeds it rate
//! samples and reads back a window and a pacing rate.
//!
//! Why: Reno's window follows loss, so 1 % random loss holds one association near
//! 1.22 · MSS / (RTT · √p) — about 3 Mbit/s at 40 ms whatever the link. BBR's window
//! follows the measured bottleneck bandwidth times the minimum RTT, so random loss that
//! does not come from a queue does not shrink it; pacing at the measured rate keeps the
//! bottleneck's queue short instead of filling it in bursts.

use std::time::{Duration, Instant};

/// Startup's gain, 2/ln 2: doubles the sending rate every round.
const HIGH_GAIN: f64 = 2.885;
/// ProbeBW's pacing gains, one phase per minimum RTT.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// ProbeBW's window gain: room for delayed and stretched acknowledgments.
const CWND_GAIN: f64 = 2.0;
/// Rounds the bandwidth maximum is kept for.
const BW_ROUNDS: u64 = 10;
/// How long a minimum RTT stays valid before ProbeRTT measures it again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long ProbeRTT holds the window at its minimum.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// A round's loss rate above which the queue is taken to be full (BBR v2's loss_thresh).
const LOSS_THRESH: f64 = 0.02;
/// Rounds without 25 % bandwidth growth after which the pipe counts as full.
const FULL_BW_ROUNDS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// One delivery-rate sample, from the most recently sent chunk a SACK acknowledged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateSample {
    /// Bytes delivered between that chunk's send and this acknowledgment.
    pub(crate) delivered: u64,
    /// Over how long (the longer of the send and the acknowledgment intervals).
    pub(crate) interval: Duration,
    /// The connection's delivered count when that chunk was sent.
    pub(crate) prior_delivered: u64,
    /// Its round trip, if it was sent once.
    pub(crate) rtt: Option<Duration>,
    /// The sender had nothing to send when that chunk left: the rate may be the
    /// application's, not the path's.
    pub(crate) app_limited: bool,
}

#[derive(Debug)]
pub(crate) struct Bbr {
    pub(crate) mode: Mode,
    mtu: u32,
    /// Recent per-round bandwidth maxima (round, bytes per second).
    bw_samples: Vec<(u64, f64)>,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Option<Instant>,
    round: u64,
    next_round_delivered: u64,
    round_start: bool,
    full_bw: f64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    cycle_index: usize,
    cycle_stamp: Option<Instant>,
    probe_rtt_done: Option<Instant>,
    probe_rtt_round_done: bool,
    pacing_gain: f64,
    cwnd_gain: f64,
    initial_cwnd: u32,
    /// Bytes judged lost, and the delivered count, since this round began.
    round_lost: u64,
    round_delivered_from: u64,
    /// A ceiling on the window after a round with a high loss rate (BBR v2's
    /// inflight_hi), and how much it rises after the next loss-free round.
    inflight_hi: Option<u64>,
    hi_step: u64,
}

impl Bbr {
    pub(crate) fn new(mtu: u32, initial_cwnd: u32) -> Bbr {
        Bbr {
            mode: Mode::Startup,
            mtu,
            bw_samples: Vec::new(),
            min_rtt: None,
            min_rtt_stamp: None,
            round: 0,
            next_round_delivered: 0,
            round_start: false,
            full_bw: 0.0,
            full_bw_rounds: 0,
            filled_pipe: false,
            cycle_index: 2,
            cycle_stamp: None,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            initial_cwnd,
            round_lost: 0,
            round_delivered_from: 0,
            inflight_hi: None,
            hi_step: u64::from(mtu),
        }
    }

    /// The bottleneck bandwidth estimate in bytes per second.
    pub(crate) fn bandwidth(&self) -> f64 {
        self.bw_samples
            .iter()
            .map(|(_, bw)| *bw)
            .fold(0.0, f64::max)
    }

    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn bdp(&self) -> Option<f64> {
        let bw = self.bandwidth();
        match self.min_rtt {
            Some(rtt) if bw > 0.0 => Some(bw * rtt.as_secs_f64()),
            _ => None,
        }
    }

    /// The window to enforce: gain × BDP (at least four packets), the initial window
    /// until the model has a sample, four packets in ProbeRTT.
    pub(crate) fn cwnd(&self) -> u32 {
        let floor = 4 * self.mtu;
        if self.mode == Mode::ProbeRtt {
            return floor;
        }
        let target = match self.bdp() {
            Some(bdp) => ((self.cwnd_gain * bdp) as u64 + 3 * u64::from(self.mtu))
                .min(u64::from(u32::MAX)) as u32,
            None => self.initial_cwnd,
        };
        // Until the pipe is known to be full, a model built from a trickle of
        // application-limited samples must not hold the window below where it started.
        let start = if self.filled_pipe {
            0
        } else {
            self.initial_cwnd
        };
        let window = target.max(start).max(floor);
        match self.inflight_hi {
            Some(hi) => window.min(hi.max(u64::from(floor)).min(u64::from(u32::MAX)) as u32),
            None => window,
        }
    }

    /// Bytes the association just judged lost.
    pub(crate) fn on_loss(&mut self, bytes: u64) {
        self.round_lost += bytes;
    }

    /// At the end of a round: a loss rate above [`LOSS_THRESH`] is taken for a full queue,
    /// so the window is capped at 0.7 × itself, as BBR v2 does; rounds without it raise the
    /// cap again, doubling the step each time. A flow sharing a bottleneck with a
    /// loss-based one then yields instead of keeping the queue full (BBR v1 takes most of
    /// such a link). Random loss above the threshold is taken for congestion too: telling
    /// the two apart by the RTT (tried) fails when this flow joins a queue that was
    /// already standing, since its minimum RTT then includes the queue.
    fn end_round_losses(&mut self, delivered: u64) {
        let round_delivered = delivered.saturating_sub(self.round_delivered_from);
        let lost = self.round_lost;
        self.round_lost = 0;
        self.round_delivered_from = delivered;
        let total = (round_delivered + lost) as f64;
        let mtu = u64::from(self.mtu);
        if lost >= 2 * mtu && total > 0.0 && lost as f64 / total > LOSS_THRESH {
            let current = u64::from(self.cwnd());
            self.inflight_hi = Some((current as f64 * 0.7) as u64);
            self.hi_step = mtu;
        } else if let Some(hi) = self.inflight_hi {
            self.inflight_hi = Some(hi + self.hi_step);
            self.hi_step = self.hi_step.saturating_mul(2);
            // Once the ceiling no longer binds, drop it.
            let uncapped = {
                let keep = self.inflight_hi.take();
                let window = u64::from(self.cwnd());
                self.inflight_hi = keep;
                window
            };
            if hi + self.hi_step > 4 * uncapped {
                self.inflight_hi = None;
            }
        }
    }

    /// Bytes per second to pace at; None before the first RTT sample (send the initial
    /// window at once, as the RFC 9260 sender does).
    pub(crate) fn pacing_rate(&self) -> Option<f64> {
        let initial = self
            .min_rtt
            .map(|rtt| HIGH_GAIN * f64::from(self.initial_cwnd) / rtt.as_secs_f64().max(1e-4));
        let bw = self.bandwidth();
        let model = (bw > 0.0).then_some(self.pacing_gain * bw);
        // As in BBR, the rate does not fall below the initial window's until the pipe has
        // been filled: a connection that has only sent small messages has measured the
        // application, and its first burst must not crawl at that rate.
        match (model, initial) {
            (Some(model), Some(initial)) if !self.filled_pipe => Some(model.max(initial)),
            (Some(model), _) => Some(model),
            (None, initial) => initial,
        }
    }

    /// Takes one SACK's rate sample. `delivered` is the connection's total so far and
    /// `inflight` the bytes still outstanding after it.
    pub(crate) fn on_ack(
        &mut self,
        sample: RateSample,
        delivered: u64,
        inflight: u64,
        now: Instant,
    ) {
        // Rounds: one per window of data, counted by delivered bytes.
        self.round_start = false;
        if sample.prior_delivered >= self.next_round_delivered {
            self.next_round_delivered = delivered;
            self.round += 1;
            self.round_start = true;
            self.end_round_losses(delivered);
        }
        if !sample.interval.is_zero() && sample.delivered > 0 {
            let bw = sample.delivered as f64 / sample.interval.as_secs_f64();
            if !sample.app_limited || bw >= self.bandwidth() {
                self.add_bandwidth(bw);
            }
        }
        if let Some(rtt) = sample.rtt {
            let expired = self
                .min_rtt_stamp
                .is_some_and(|stamp| now.saturating_duration_since(stamp) > MIN_RTT_WINDOW);
            if self.min_rtt.is_none_or(|min| rtt <= min) || expired {
                self.min_rtt = Some(rtt);
                self.min_rtt_stamp = Some(now);
                if expired && self.mode != Mode::ProbeRtt {
                    self.enter_probe_rtt();
                }
            }
        }
        self.check_full_pipe(sample.app_limited);
        self.advance_mode(inflight, now);
    }

    fn add_bandwidth(&mut self, bw: f64) {
        match self.bw_samples.last_mut() {
            Some((round, value)) if *round == self.round => *value = value.max(bw),
            _ => self.bw_samples.push((self.round, bw)),
        }
        let oldest = self.round.saturating_sub(BW_ROUNDS - 1);
        self.bw_samples.retain(|(round, _)| *round >= oldest);
    }

    fn check_full_pipe(&mut self, app_limited: bool) {
        if self.filled_pipe || !self.round_start || app_limited {
            return;
        }
        let bw = self.bandwidth();
        if bw >= self.full_bw * 1.25 {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= FULL_BW_ROUNDS {
            self.filled_pipe = true;
        }
    }

    fn advance_mode(&mut self, inflight: u64, now: Instant) {
        match self.mode {
            Mode::Startup if self.filled_pipe => {
                self.mode = Mode::Drain;
                self.pacing_gain = 1.0 / HIGH_GAIN;
                self.cwnd_gain = HIGH_GAIN;
                self.advance_mode(inflight, now);
            }
            Mode::Drain if self.bdp().is_none_or(|bdp| inflight as f64 <= bdp) => {
                self.enter_probe_bw(now);
            }
            Mode::ProbeBw => {
                let phase = self.min_rtt.unwrap_or(Duration::from_millis(100));
                let elapsed = self
                    .cycle_stamp
                    .is_none_or(|stamp| now.saturating_duration_since(stamp) > phase);
                let gain = CYCLE[self.cycle_index];
                let bdp = self.bdp().unwrap_or(0.0);
                // Leave the probing phase once it has put gain × BDP in flight, and the
                // draining phase early once the queue it made is gone.
                let next = if gain > 1.0 {
                    elapsed && inflight as f64 >= gain * bdp
                } else if gain < 1.0 {
                    elapsed || inflight as f64 <= bdp
                } else {
                    elapsed
                };
                if next {
                    self.cycle_index = (self.cycle_index + 1) % CYCLE.len();
                    self.cycle_stamp = Some(now);
                    self.pacing_gain = CYCLE[self.cycle_index];
                }
            }
            Mode::ProbeRtt => {
                if self.probe_rtt_done.is_none() && inflight <= u64::from(4 * self.mtu) {
                    self.probe_rtt_done = Some(now + PROBE_RTT_TIME);
                    self.probe_rtt_round_done = false;
                    self.next_round_delivered = 0;
                }
                if self.probe_rtt_done.is_some() && self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done && self.probe_rtt_done.is_some_and(|t| now >= t) {
                    self.min_rtt_stamp = Some(now);
                    self.probe_rtt_done = None;
                    if self.filled_pipe {
                        self.enter_probe_bw(now);
                    } else {
                        self.mode = Mode::Startup;
                        self.pacing_gain = HIGH_GAIN;
                        self.cwnd_gain = HIGH_GAIN;
                    }
                }
            }
            _ => {}
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        self.cwnd_gain = CWND_GAIN;
        self.cycle_index = 2;
        self.cycle_stamp = Some(now);
        self.pacing_gain = CYCLE[self.cycle_index];
    }

    fn enter_probe_rtt(&mut self) {
        self.mode = Mode::ProbeRtt;
        self.pacing_gain = 1.0;
        self.probe_rtt_done = None;
    }
}

/// The rate sampler's connection-wide state (draft-cheng-iccrg-delivery-rate-estimation).
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Bytes the peer has acknowledged, and when the last of them was.
    pub(crate) delivered: u64,
    delivered_time: Option<Instant>,
    /// When the chunk behind the newest sample was sent.
    first_sent_time: Option<Instant>,
    /// Samples up to this delivered count were taken while the sender had nothing to
    /// send (0: not application-limited).
    app_limited_until: u64,
    /// The best sample of the SACK being processed.
    candidate: Option<Candidate>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    prior_delivered: u64,
    prior_time: Instant,
    send_elapsed: Duration,
    rtt: Option<Duration>,
    app_limited: bool,
}

impl Delivery {
    /// Stamps a chunk being (re)sent with the connection's delivery state.
    pub(crate) fn on_send(
        &mut self,
        chunk: &mut crate::chunk::chunk_payload_data::ChunkPayloadData,
        nothing_in_flight: bool,
        now: Instant,
    ) {
        if nothing_in_flight || self.delivered_time.is_none() {
            self.first_sent_time = Some(now);
            self.delivered_time = Some(now);
        }
        chunk.delivered_at_send = self.delivered;
        chunk.delivered_time_at_send = self.delivered_time;
        chunk.first_sent_at_send = self.first_sent_time;
        chunk.app_limited_at_send = self.app_limited_until > self.delivered;
    }

    /// Takes the acknowledgment of `bytes` of a chunk; the most recently sent chunk of a
    /// SACK gives its sample.
    pub(crate) fn on_acked(
        &mut self,
        chunk: &crate::chunk::chunk_payload_data::ChunkPayloadData,
        bytes: u64,
        now: Instant,
    ) {
        self.delivered += bytes;
        self.delivered_time = Some(now);
        let (Some(prior_time), Some(sent), Some(first)) = (
            chunk.delivered_time_at_send,
            chunk.last_sent,
            chunk.first_sent_at_send,
        ) else {
            return;
        };
        if self
            .candidate
            .is_some_and(|c| chunk.delivered_at_send < c.prior_delivered)
        {
            return;
        }
        self.candidate = Some(Candidate {
            prior_delivered: chunk.delivered_at_send,
            prior_time,
            send_elapsed: sent.saturating_duration_since(first),
            rtt: (chunk.nsent == 1).then(|| now.saturating_duration_since(sent)),
            app_limited: chunk.app_limited_at_send,
        });
        self.first_sent_time = Some(sent);
    }

    /// The SACK's sample, once all its chunks were taken.
    pub(crate) fn take_sample(&mut self) -> Option<RateSample> {
        let c = self.candidate.take()?;
        let ack_elapsed = self.delivered_time.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(c.prior_time)
        });
        if self.app_limited_until > 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        Some(RateSample {
            delivered: self.delivered - c.prior_delivered,
            interval: c.send_elapsed.max(ack_elapsed),
            prior_delivered: c.prior_delivered,
            rtt: c.rtt,
            app_limited: c.app_limited,
        })
    }

    /// The sender ran out of data with `inflight` bytes outstanding: samples until those
    /// are delivered measure the application, not the path.
    pub(crate) fn on_app_limited(&mut self, inflight: u64) {
        self.app_limited_until = (self.delivered + inflight).max(1);
    }
}

/// Spaces packets at the controller's rate: a packet may leave once its turn is less
/// than [`PACING_SLACK`] away (timers are about a millisecond coarse).
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    next: Option<Instant>,
    /// Sending stopped for pacing with data waiting: wake at `next`.
    pub(crate) blocked: bool,
}

/// How far ahead of its turn a packet may leave.
pub(crate) const PACING_SLACK: Duration = Duration::from_millis(1);
/// How far behind schedule the pacer may catch up at once.
pub(crate) const PACING_CATCH_UP: Duration = Duration::from_millis(4);

impl Pacer {
    /// Whether a packet may leave now.
    pub(crate) fn may_send(&mut self, now: Instant) -> bool {
        let ok = self.next.is_none_or(|next| next <= now + PACING_SLACK);
        if !ok {
            self.blocked = true;
        }
        ok
    }

    /// Books `bytes` sent at `rate` bytes per second.
    pub(crate) fn on_sent(&mut self, bytes: usize, rate: f64, now: Instant) {
        // A wake-up a little late (timers are coarse, the driver is busy) keeps its place
        // in the schedule, or every late wake-up would lower the rate actually sent — and
        // with it the bandwidth the model measures. Longer idle time earns no burst.
        let floor = now.checked_sub(PACING_CATCH_UP).unwrap_or(now);
        let start = self.next.map_or(now, |next| next.max(floor));
        self.next = Some(start + Duration::from_secs_f64(bytes as f64 / rate.max(1.0)));
    }

    /// When to wake to send more, if sending stopped for pacing.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        if self.blocked {
            self.next.map(|next| next - PACING_SLACK)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u32 = 1200;

    /// Feeds rounds of samples from a path of `bw` bytes/s and `rtt`, the sender always
    /// having data; returns the controller and the time reached.
    fn drive(bbr: &mut Bbr, start: Instant, rounds: u64, bw: f64, rtt: Duration) -> Instant {
        let mut now = start;
        let mut delivered = 0u64;
        for _ in 0..rounds {
            let prior = delivered;
            delivered += (bw * rtt.as_secs_f64()) as u64;
            now += rtt;
            let sample = RateSample {
                delivered: delivered - prior,
                interval: rtt,
                prior_delivered: prior,
                rtt: Some(rtt),
                app_limited: false,
            };
            let inflight = (bw * rtt.as_secs_f64()) as u64;
            bbr.on_ack(sample, delivered, inflight, now);
        }
        now
    }

    #[test]
    fn the_window_follows_bandwidth_times_min_rtt_once_the_pipe_is_full() {
        let mut bbr = Bbr::new(MTU, 4 * MTU);
        assert_eq!(bbr.cwnd(), 4 * MTU);
        assert_eq!(bbr.pacing_rate(), None);
        let rtt = Duration::from_millis(40);
        let bw = 6_250_000.0; // 50 Mbit/s
        drive(&mut bbr, Instant::now(), 20, bw, rtt);
        assert_eq!(bbr.mode, Mode::ProbeBw);
        let bdp = bw * 0.04;
        let cwnd = f64::from(bbr.cwnd());
        assert!(
            (cwnd - (2.0 * bdp + 3.0 * 1200.0)).abs() < 1.0,
            "{cwnd} vs {bdp}"
        );
        let rate = bbr.pacing_rate().unwrap();
        assert!(rate >= 0.75 * bw && rate <= 1.25 * bw, "{rate}");
    }

    #[test]
    fn random_loss_does_not_shrink_the_model() {
        // Loss reaches the model only as fewer delivered bytes; a 1 % shortfall in one
        // round leaves the ten-round maximum where it was.
        let mut bbr = Bbr::new(MTU, 4 * MTU);
        let rtt = Duration::from_millis(40);
        let now = drive(&mut bbr, Instant::now(), 20, 6_250_000.0, rtt);
        let before = bbr.bandwidth();
        drive(&mut bbr, now, 3, 6_250_000.0 * 0.99, rtt);
        assert_eq!(bbr.bandwidth(), before);
    }

    #[test]
    fn an_application_limited_sample_does_not_lower_the_estimate() {
        let mut bbr = Bbr::new(MTU, 4 * MTU);
        let start = Instant::now();
        let now = drive(&mut bbr, start, 5, 1_000_000.0, Duration::from_millis(20));
        let before = bbr.bandwidth();
        for i in 0..20u64 {
            let sample = RateSample {
                delivered: 100,
                interval: Duration::from_millis(20),
                prior_delivered: 1_000_000 + i,
                rtt: Some(Duration::from_millis(20)),
                app_limited: true,
            };
            bbr.on_ack(
                sample,
                2_000_000 + i * 1000,
                0,
                now + Duration::from_millis(20 * i),
            );
        }
        assert_eq!(bbr.bandwidth(), before);
    }

    #[test]
    fn a_late_wake_up_keeps_its_place_in_the_schedule() {
        // 1,200 bytes per millisecond; the timer wakes the sender 1.5 ms late every time.
        let start = Instant::now();
        let mut pacer = Pacer::default();
        let rate = 1_200_000.0;
        let mut now = start;
        let mut sent = 0u64;
        for _ in 0..100 {
            while pacer.may_send(now) {
                pacer.on_sent(1200, rate, now);
                sent += 1200;
            }
            now = pacer.wake_at().unwrap() + Duration::from_micros(1500);
        }
        let achieved = sent as f64 / (now - start).as_secs_f64();
        assert!(achieved > 0.95 * rate, "{achieved}");
    }

    #[test]
    fn the_pacer_spaces_packets_at_the_rate_and_idle_time_earns_no_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::default();
        let rate = 1_200_000.0; // 1,200 bytes per millisecond
        let mut sent = 0;
        while pacer.may_send(start) {
            pacer.on_sent(1200, rate, start);
            sent += 1;
        }
        // The first packet, and the one whose turn is within the slack.
        assert_eq!(sent, 2);
        assert_eq!(pacer.wake_at(), Some(start + Duration::from_millis(1)));
        // A second later: only the catch-up and the slack's worth at once.
        let later = start + Duration::from_secs(1);
        let mut burst = 0;
        while pacer.may_send(later) {
            pacer.on_sent(1200, rate, later);
            burst += 1;
        }
        assert_eq!(burst, 6);
    }

    #[test]
    fn a_trickle_of_small_messages_does_not_pace_the_first_burst_at_its_rate() {
        // Control messages of 100 bytes a round trip: the model measures 2.5 kB/s, all of
        // it application-limited.
        let mut bbr = Bbr::new(MTU, 4 * MTU);
        let start = Instant::now();
        let rtt = Duration::from_millis(40);
        for i in 0..10u64 {
            let sample = RateSample {
                delivered: 100,
                interval: rtt,
                prior_delivered: i * 100,
                rtt: Some(rtt),
                app_limited: true,
            };
            bbr.on_ack(sample, (i + 1) * 100, 0, start + rtt * (i as u32 + 1));
        }
        assert!(bbr.bandwidth() < 3000.0);
        let initial = HIGH_GAIN * f64::from(4 * MTU) / 0.04;
        assert!(bbr.pacing_rate().unwrap() >= initial);
        assert!(bbr.cwnd() >= 4 * MTU);
    }

    #[test]
    fn a_round_with_high_loss_caps_the_window_and_clean_rounds_lift_the_cap() {
        let mut bbr = Bbr::new(MTU, 4 * MTU);
        let rtt = Duration::from_millis(40);
        let per_round = 250_000u64; // 50 Mbit/s for 40 ms
        let (mut now, mut delivered) = (Instant::now(), 0u64);
        let mut round = |bbr: &mut Bbr, lost: u64| {
            bbr.on_loss(lost);
            let prior = delivered;
            delivered += per_round;
            now += rtt;
            let sample = RateSample {
                delivered: per_round,
                interval: rtt,
                prior_delivered: prior,
                rtt: Some(rtt),
                app_limited: false,
            };
            bbr.on_ack(sample, delivered, per_round, now);
        };
        for _ in 0..20 {
            round(&mut bbr, 0);
        }
        let open = bbr.cwnd();
        // 1 % of a round lost (random loss): nothing changes.
        round(&mut bbr, 2_500);
        round(&mut bbr, 0);
        assert_eq!(bbr.cwnd(), open);
        // 5 % of a round lost (a full queue): the window drops to 0.7 of itself.
        round(&mut bbr, 12_500);
        round(&mut bbr, 0);
        let capped = bbr.cwnd();
        assert!(
            f64::from(capped) < 0.72 * f64::from(open),
            "{capped} vs {open}"
        );
        // Clean rounds raise the cap, faster each round, until it no longer binds.
        for _ in 0..12 {
            round(&mut bbr, 0);
        }
        assert_eq!(bbr.cwnd(), open);
    }

    #[test]
    fn an_old_min_rtt_is_measured_again_with_a_small_window() {
        let mut bbr = Bbr::new(MTU, 4 * MTU);
        let rtt = Duration::from_millis(40);
        let now = drive(&mut bbr, Instant::now(), 20, 6_250_000.0, rtt);
        // Eleven seconds later the path's RTT reads higher (a queue): ProbeRTT.
        let later = now + Duration::from_secs(11);
        let sample = RateSample {
            delivered: 250_000,
            interval: Duration::from_millis(60),
            prior_delivered: u64::MAX / 2,
            rtt: Some(Duration::from_millis(60)),
            app_limited: false,
        };
        bbr.on_ack(sample, u64::MAX / 2 + 250_000, 250_000, later);
        assert_eq!(bbr.mode, Mode::ProbeRtt);
        assert_eq!(bbr.cwnd(), 4 * MTU);
    }
}
