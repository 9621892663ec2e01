//! Which loss recovery and congestion control the daemon's SCTP associations use (the
//! patched rtc-sctp in `crates/rtc-sctp`; docs/TRANSPORT.md has what each step measures).
//! The `rtc` crate builds each association's `TransportConfig` itself, so the choice is
//! installed as the process default before any peer connection exists.

use std::str::FromStr;
use std::time::Duration;

use rtc_sctp::{CongestionControl, RecoveryConfig};
use serde::{Deserialize, Serialize};

/// RTO floor of the patched profiles: low hundreds of milliseconds, as Chromium's dcSCTP.
pub const RTO_MIN: Duration = Duration::from_millis(200);
/// SACK as soon as reads reopen this share of the receive window.
pub const WINDOW_UPDATE_PERCENT: u8 = 25;

/// A step of the transport's changes, cumulative; the later, the more of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SctpRecovery {
    /// rtc-sctp 0.21.1 as released: 1 s RTO floor, RFC 9260 fast retransmit, Reno.
    Upstream,
    /// Only the RTO floor lowered to [`RTO_MIN`].
    Rto,
    /// The RTO floor, RACK-TLP loss detection and window-update SACKs, with Reno.
    Rack,
    /// All of `rack`, with the BBR-style controller and pacing instead of Reno.
    #[default]
    Bbr,
}

impl SctpRecovery {
    /// Every value, as the command line and the config file spell them.
    pub const NAMES: [&'static str; 4] = ["upstream", "rto", "rack", "bbr"];

    /// The step as the command line and the config file spell it.
    pub fn name(self) -> &'static str {
        match self {
            SctpRecovery::Upstream => "upstream",
            SctpRecovery::Rto => "rto",
            SctpRecovery::Rack => "rack",
            SctpRecovery::Bbr => "bbr",
        }
    }

    /// The association settings this step stands for.
    pub fn config(self) -> RecoveryConfig {
        let upstream = RecoveryConfig::default();
        match self {
            SctpRecovery::Upstream => upstream,
            SctpRecovery::Rto => RecoveryConfig {
                rto_min: RTO_MIN,
                ..upstream
            },
            SctpRecovery::Rack => RecoveryConfig {
                rto_min: RTO_MIN,
                rack: true,
                tail_loss_probe: true,
                window_update_percent: WINDOW_UPDATE_PERCENT,
                ..upstream
            },
            SctpRecovery::Bbr => RecoveryConfig {
                congestion_control: CongestionControl::Bbr,
                ..SctpRecovery::Rack.config()
            },
        }
    }

    /// Makes this the setting of every association created from now on in this process,
    /// with receive windows that may grow to `receive_window_max` bytes (not `upstream`,
    /// which stays as released).
    pub fn install(self, receive_window_max: u32) {
        let receive_window_max = match self {
            SctpRecovery::Upstream => 0,
            _ => receive_window_max,
        };
        rtc_sctp::set_default_recovery(RecoveryConfig {
            receive_window_max,
            ..self.config()
        });
    }
}

impl FromStr for SctpRecovery {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "upstream" => Ok(SctpRecovery::Upstream),
            "rto" => Ok(SctpRecovery::Rto),
            "rack" => Ok(SctpRecovery::Rack),
            "bbr" => Ok(SctpRecovery::Bbr),
            other => Err(format!(
                "unknown SCTP recovery {other:?}: use one of {}",
                SctpRecovery::NAMES.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_their_steps_and_each_step_adds_to_the_last() {
        for name in SctpRecovery::NAMES {
            let step: SctpRecovery = name.parse().unwrap();
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
        assert!("fast".parse::<SctpRecovery>().is_err());
        assert_eq!(SctpRecovery::Upstream.config(), RecoveryConfig::default());
        assert_eq!(SctpRecovery::Rto.config().rto_min, RTO_MIN);
        assert!(!SctpRecovery::Rto.config().rack);
        let rack = SctpRecovery::Rack.config();
        assert!(rack.rack && rack.tail_loss_probe && rack.rto_min == RTO_MIN);
        assert_eq!(rack.congestion_control, CongestionControl::Reno);
        let bbr = SctpRecovery::Bbr.config();
        assert_eq!(bbr.congestion_control, CongestionControl::Bbr);
        assert_eq!(
            RecoveryConfig {
                congestion_control: CongestionControl::Reno,
                ..bbr
            },
            rack
        );
        assert_eq!(SctpRecovery::default(), SctpRecovery::Bbr);
    }
}
