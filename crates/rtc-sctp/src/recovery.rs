//! Loss recovery, congestion control and receive-window settings beyond RFC 9260's fixed
//! constants. [`RecoveryConfig::default`] is exactly the behaviour of rtc-sctp 0.21.1, so
//! nothing changes unless an application opts in.
//!
//! Applications that build `TransportConfig` themselves set it with
//! [`crate::TransportConfig::with_recovery`]. Applications that reach SCTP through a WebRTC
//! stack that builds `TransportConfig::default()` internally (the `rtc` crate does) can set
//! a process-wide default with [`set_default_recovery`] before creating peer connections.

use std::sync::RwLock;
use std::time::Duration;

/// Which congestion controller grows and shrinks the sending window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// RFC 9260 §7.2: slow start, then one MTU per window (Reno); the window halves on
    /// loss and collapses to one MTU on a retransmission timeout.
    #[default]
    Reno,
    /// A delivery-rate model in the style of BBR: the window follows the measured
    /// bottleneck bandwidth times the minimum RTT, sending is paced at that rate, and
    /// random loss alone does not shrink it.
    Bbr,
}

/// Loss recovery and congestion control settings of an association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// RTO before the first RTT measurement (RFC 9260 §16: 1 s).
    pub rto_initial: Duration,
    /// Lower bound of the RTO (RFC 9260 §16: 1 s; RFC 6298 allows less, and Chromium's
    /// dcSCTP uses a few hundred milliseconds).
    pub rto_min: Duration,
    /// Upper bound of the RTO, backoff included (RFC 9260 §16: 60 s).
    pub rto_max: Duration,
    /// Time-based loss detection (RACK, RFC 8985): a chunk is lost once a chunk sent a
    /// reordering window after it is acknowledged, however often it was sent before, so
    /// every loss in a window is repaired without waiting for the retransmission timer.
    /// Off: RFC 9260 §7.2.4 (three miss indications, each chunk fast-retransmitted once).
    pub rack: bool,
    /// A tail-loss probe (RFC 8985 §7): when nothing has been acknowledged for about two
    /// round trips, one chunk is (re)sent so that losses at the end of a burst are found
    /// by RACK instead of by the retransmission timer. Needs `rack`.
    pub tail_loss_probe: bool,
    /// Send a SACK as soon as the application's reads reopen at least this fraction (in
    /// per cent) of the receive window, instead of waiting for the next DATA. 0: off.
    pub window_update_percent: u8,
    /// The congestion controller.
    pub congestion_control: CongestionControl,
    /// With [`CongestionControl::Bbr`]: paths whose minimum RTT is below this keep Reno
    /// (with RACK). On loopback and LANs loss recovers within a millisecond anyway, while
    /// pacing at gigabit rates and a window of two tiny BDPs cost CPU and throughput.
    pub bbr_min_rtt: Duration,
    /// Largest receive window (bytes) the association may grow to. The window starts at
    /// `TransportConfig::max_receive_buffer_size` and doubles, at most, each round trip in
    /// which the application consumed more than half of it, so a long fat path gets the
    /// window its bandwidth-delay product needs while a slow reader holds no more than
    /// before. 0 (or anything not above the starting window): fixed, as upstream.
    pub receive_window_max: u32,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_secs(1),
            rto_max: Duration::from_secs(60),
            rack: false,
            tail_loss_probe: false,
            window_update_percent: 0,
            congestion_control: CongestionControl::Reno,
            bbr_min_rtt: Duration::from_millis(5),
            receive_window_max: 0,
        }
    }
}

static PROCESS_DEFAULT: RwLock<Option<RecoveryConfig>> = RwLock::new(None);

/// Makes `config` what `TransportConfig::default()` uses from now on in this process
/// (associations already created keep theirs).
pub fn set_default_recovery(config: RecoveryConfig) {
    let mut slot = PROCESS_DEFAULT
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = Some(config);
}

/// What `TransportConfig::default()` uses: the process default if one was set.
pub(crate) fn default_recovery() -> RecoveryConfig {
    let slot = PROCESS_DEFAULT
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_rfc_9260_as_upstream_has_it() {
        let config = RecoveryConfig::default();
        assert_eq!(config.rto_min, Duration::from_secs(1));
        assert_eq!(config.rto_initial, Duration::from_secs(1));
        assert_eq!(config.rto_max, Duration::from_secs(60));
        assert!(!config.rack && !config.tail_loss_probe);
        assert_eq!(config.window_update_percent, 0);
        assert_eq!(config.congestion_control, CongestionControl::Reno);
        assert_eq!(config.receive_window_max, 0);
    }
}
