//! Time-based loss detection (RACK, RFC 8985) and the tail-loss probe, for SCTP.
//!
//! Upstream's recovery (RFC 9260 §7.2.4) counts three miss indications and then
//! fast-retransmits each chunk at most once; a lost retransmission, or a loss among the
//! last packets of a burst, waits for T3-rtx (1 s at least). RACK instead remembers when
//! the most recently sent chunk that the peer acknowledged was sent: any outstanding chunk
//! sent more than a reordering window before it is lost, however many times it was sent,
//! so every loss in a window is repaired within about a round trip. When the
//! acknowledgments stop, a probe after about two round trips makes the peer report the
//! tail so that RACK can see it.
//!
//! [`Rack`] is the pure state; the `impl Association` below applies it to the queues.

use super::*;

/// The smallest probe timeout: below it the peer's own acknowledgment timing dominates.
const MIN_PTO: Duration = Duration::from_millis(10);

/// RACK's state for one association.
#[derive(Debug, Default)]
pub(crate) struct Rack {
    /// When the most recently sent acknowledged chunk was (last) sent, and its TSN.
    xmit_time: Option<Instant>,
    /// The smallest and the smoothed round-trip time measured, at full precision.
    min_rtt: Option<Duration>,
    srtt: Option<Duration>,
    /// First-transmission chunks below this TSN have all been judged (acknowledged,
    /// abandoned, lost, or sent again); the scan goes on from here.
    scan_from: Option<u32>,
    /// Outstanding chunks sent more than once: judged on every acknowledgment.
    pub(crate) retransmitted: Vec<u32>,
    /// Chunks judged lost, oldest first, waiting to be sent again.
    pub(crate) lost: VecDeque<u32>,
    /// When the tail-loss probe fires, if armed.
    pub(crate) probe_at: Option<Instant>,
    /// A probe fired: the next send may exceed cwnd by one chunk.
    pub(crate) probe_due: bool,
}

impl Rack {
    /// RFC 8985 §6.2: a quarter of the minimum RTT, never more than the smoothed RTT.
    pub(crate) fn reordering_window(&self) -> Duration {
        match (self.min_rtt, self.srtt) {
            (Some(min), Some(srtt)) => (min / 4).min(srtt),
            _ => Duration::ZERO,
        }
    }

    /// Takes the acknowledgment of a chunk last sent at `sent`, `nsent` times in all.
    pub(crate) fn on_acked(&mut self, sent: Instant, nsent: u32, now: Instant) {
        let rtt = now.saturating_duration_since(sent);
        // A retransmitted chunk acknowledged sooner than the minimum RTT was acknowledged
        // for an earlier copy (RFC 8985 §6.2 step 2): its time says nothing.
        if nsent > 1 && self.min_rtt.is_some_and(|min| rtt < min) {
            return;
        }
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |min| min.min(rtt)));
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(srtt) => (srtt * 7 + rtt) / 8,
        });
        if self.xmit_time.is_none_or(|t| sent > t) {
            self.xmit_time = Some(sent);
        }
    }

    /// Whether a chunk last sent at `sent` and still unacknowledged is lost.
    pub(crate) fn is_lost(&self, sent: Instant) -> bool {
        self.xmit_time
            .is_some_and(|latest| sent + self.reordering_window() < latest)
    }

    /// RFC 8985 §7.2: two smoothed RTTs. RFC 8985 adds the peer's delayed-acknowledgment
    /// time when a single segment is outstanding, to spare a probe the peer's delayed SACK
    /// would have made unnecessary; here that would put the probe after T3-rtx (200 ms of
    /// SACK delay against a few hundred ms of RTO) and leave a lost last chunk to the
    /// timer, while a needless probe costs one packet. So it is not added.
    pub(crate) fn probe_timeout(&self) -> Duration {
        self.srtt
            .map_or(Duration::from_secs(1), |srtt| (srtt * 2).max(MIN_PTO))
    }

    /// Forgets every judgment after a retransmission timeout, which resends all.
    pub(crate) fn on_timeout(&mut self) {
        self.lost.clear();
        self.probe_at = None;
        self.probe_due = false;
    }
}

impl Association {
    /// RACK's step for one chunk the peer just acknowledged (cumulatively or in a gap).
    pub(crate) fn rack_on_acked(&mut self, last_sent: Option<Instant>, nsent: u32, now: Instant) {
        if let Some(sent) = last_sent {
            self.rack.on_acked(sent, nsent, now);
        }
    }

    /// Marks every outstanding chunk RACK now judges lost and, on the first loss of a
    /// window, makes the congestion response once (RFC 9260 §7.2.3 / RFC 6582 style: the
    /// window shrinks once per window of data, not once per lost chunk).
    pub(crate) fn rack_detect_losses(&mut self) {
        let mut newly_lost = Vec::new();
        // Chunks sent more than once: few, judged each time.
        let mut i = 0;
        while i < self.rack.retransmitted.len() {
            let tsn = self.rack.retransmitted[i];
            match self.inflight_queue.get(tsn) {
                Some(c) if c.is_outstanding() => {
                    if !c.lost && c.last_sent.is_some_and(|t| self.rack.is_lost(t)) {
                        newly_lost.push(tsn);
                        self.rack.retransmitted.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                _ => {
                    self.rack.retransmitted.swap_remove(i);
                }
            }
        }
        // First transmissions go out in TSN order, so the scan stops at the first one that
        // is too recent to judge.
        let first = self.cumulative_tsn_ack_point.wrapping_add(1);
        let mut tsn = match self.rack.scan_from {
            Some(from) if sna32gt(from, first) => from,
            _ => first,
        };
        while sna32lt(tsn, self.my_next_tsn) {
            if let Some(c) = self.inflight_queue.get(tsn)
                && c.is_outstanding()
                && !c.lost
                && c.nsent == 1
            {
                if !c.last_sent.is_some_and(|t| self.rack.is_lost(t)) {
                    break;
                }
                newly_lost.push(tsn);
            }
            tsn = tsn.wrapping_add(1);
        }
        self.rack.scan_from = Some(tsn);
        if newly_lost.is_empty() {
            return;
        }
        newly_lost.sort_by(|a, b| {
            if sna32lt(*a, *b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        let mut lost_bytes = 0u64;
        for tsn in newly_lost {
            if let Some(c) = self.inflight_queue.get_mut(tsn) {
                c.lost = true;
                lost_bytes += c.user_data.len() as u64;
                self.rack.lost.push_back(tsn);
            }
        }
        if let Some(bbr) = &mut self.bbr {
            bbr.on_loss(lost_bytes);
        }
        if !self.in_fast_recovery {
            self.in_fast_recovery = true;
            self.fast_recover_exit_point = self.my_next_tsn.wrapping_sub(1);
            self.on_congestion_event();
        }
        self.awake_write_loop();
    }

    /// Bytes of chunks judged lost and not yet sent again: no longer in the network, so
    /// they do not count against cwnd (RFC 6675's "pipe").
    pub(crate) fn rack_lost_bytes(&self) -> usize {
        self.rack
            .lost
            .iter()
            .filter_map(|tsn| self.inflight_queue.get(*tsn))
            .filter(|c| c.lost && c.is_outstanding())
            .map(|c| c.user_data.len())
            .sum()
    }

    /// Sends chunks judged lost again, oldest first, as far as cwnd allows (one chunk past
    /// it when a probe is due).
    pub(crate) fn gather_rack_retransmissions(
        &mut self,
        mut raw_packets: Vec<Bytes>,
        now: Instant,
    ) -> Vec<Bytes> {
        if self.rack.lost.is_empty() {
            return raw_packets;
        }
        let mut pipe = self
            .inflight_queue
            .get_num_bytes()
            .saturating_sub(self.rack_lost_bytes());
        let mut chunks = Vec::new();
        let pacing_rate = self.pacing_rate();
        while let Some(&tsn) = self.rack.lost.front() {
            let Some(c) = self.inflight_queue.get(tsn) else {
                self.rack.lost.pop_front();
                continue;
            };
            if !c.lost || !c.is_outstanding() {
                self.rack.lost.pop_front();
                continue;
            }
            let len = c.user_data.len();
            if pipe + len > self.cwnd as usize && !self.rack.probe_due {
                break;
            }
            if pacing_rate.is_some() && !self.pacer.may_send(now) {
                break;
            }
            match self.abandon_retransmit_candidate(tsn, now) {
                Ok(true) => {
                    self.rack.lost.pop_front();
                    continue;
                }
                Ok(false) => {}
                Err(err) => {
                    self.fail_message_queue(err);
                    return vec![];
                }
            }
            self.rack.probe_due = false;
            self.rack.lost.pop_front();
            let empty = pipe == 0;
            if let Some(c) = self.inflight_queue.get_mut(tsn) {
                c.lost = false;
                c.retransmit = false;
                c.nsent += 1;
                c.last_sent = Some(now);
                if self.bbr.is_some() {
                    self.delivery.on_send(c, empty, now);
                }
                if let Some(rate) = pacing_rate {
                    self.pacer
                        .on_sent(len + DATA_CHUNK_HEADER_SIZE as usize, rate, now);
                }
                self.stats.inc_fast_retrans();
                chunks.push(c.clone());
                self.rack.retransmitted.push(tsn);
                pipe += len;
            }
        }
        if !chunks.is_empty() {
            self.timers
                .start_if_idle(Timer::T3RTX, now, self.rto_mgr.get_rto());
            if self.rack.probe_at.is_none() {
                self.rack_arm_probe(now);
            }
            self.bundle_data_chunks_into_packets(chunks, &mut raw_packets);
        }
        raw_packets
    }

    /// (Re)arms the tail-loss probe after sending or after an acknowledgment, while data
    /// is outstanding and the probe would come before T3-rtx.
    pub(crate) fn rack_arm_probe(&mut self, now: Instant) {
        if !self.recovery.tail_loss_probe || self.inflight_queue.is_empty() {
            self.rack.probe_at = None;
            return;
        }
        let pto = self.rack.probe_timeout();
        // RFC 8985 §7.2: PTO = min(PTO, RTO); the probe then re-arms T3-rtx, so a lone
        // lost tail costs a probe instead of a timeout and its window collapse.
        let at = now + pto;
        self.rack.probe_at = Some(match self.timers.get(Timer::T3RTX) {
            Some(rto) => rto.min(at),
            None => at,
        });
    }

    /// The probe fired: send one chunk past cwnd — new data if there is some, else the
    /// newest outstanding chunk again — so the peer's SACK shows RACK what the tail lost.
    pub(crate) fn on_probe_timeout(&mut self, now: Instant) {
        self.rack.probe_at = None;
        self.rack.probe_due = true;
        self.timers.set(Timer::T3RTX, None);
        self.timers.start(Timer::T3RTX, now, self.rto_mgr.get_rto());
        if self.pending_queue.is_empty() && self.rack.lost.is_empty() {
            let mut tsn = self.my_next_tsn.wrapping_sub(1);
            while sna32gt(tsn, self.cumulative_tsn_ack_point) {
                if let Some(c) = self.inflight_queue.get_mut(tsn)
                    && c.is_outstanding()
                {
                    c.lost = true;
                    self.rack.lost.push_back(tsn);
                    break;
                }
                tsn = tsn.wrapping_sub(1);
            }
        }
        self.awake_write_loop();
    }

    /// The congestion controller's response to loss found by RACK, once per window.
    pub(crate) fn on_congestion_event(&mut self) {
        // BBR's window follows its bandwidth model, not loss.
        if self.bbr_in_charge() {
            return;
        }
        self.ssthresh = std::cmp::max(self.cwnd / 2, 4 * self.mtu);
        self.cwnd = self.ssthresh;
        self.partial_bytes_acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_chunk_sent_a_reordering_window_before_an_acknowledged_one_is_lost() {
        let start = Instant::now();
        let mut rack = Rack::default();
        // Chunks sent at 0, 2, 4 ... 20 ms over a 40 ms path; the one sent at 10 ms is
        // acknowledged at 50 ms.
        rack.on_acked(start + ms(10), 1, start + ms(50));
        assert_eq!(rack.reordering_window(), ms(10));
        assert!(
            !rack.is_lost(start + ms(0)),
            "exactly one window before: not yet"
        );
        assert!(rack.is_lost(start - ms(1)));
        // A later acknowledgment moves the reference forward.
        rack.on_acked(start + ms(30), 1, start + ms(70));
        assert!(rack.is_lost(start + ms(19)));
        assert!(!rack.is_lost(start + ms(25)));
    }

    #[test]
    fn a_retransmission_acknowledged_too_soon_does_not_move_the_reference() {
        let start = Instant::now();
        let mut rack = Rack::default();
        rack.on_acked(start, 1, start + ms(40));
        // Resent at 100 ms, acknowledged 5 ms later: that was the first copy's SACK.
        rack.on_acked(start + ms(100), 2, start + ms(105));
        assert!(!rack.is_lost(start + ms(50)));
        // Acknowledged a full RTT after the resend: it counts.
        rack.on_acked(start + ms(100), 2, start + ms(141));
        assert!(rack.is_lost(start + ms(50)));
    }

    #[test]
    fn the_probe_waits_two_round_trips() {
        let start = Instant::now();
        let mut rack = Rack::default();
        assert_eq!(rack.probe_timeout(), Duration::from_secs(1));
        rack.on_acked(start, 1, start + ms(40));
        assert_eq!(rack.probe_timeout(), ms(80));
        let mut fast = Rack::default();
        fast.on_acked(start, 1, start + Duration::from_micros(100));
        assert_eq!(fast.probe_timeout(), MIN_PTO);
    }
}
