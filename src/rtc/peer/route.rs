//! What the WebRTC stack's statistics say about a peer connection: the path its selected
//! candidate pair takes and both DTLS certificates' fingerprints.

use std::sync::Arc;

use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateType, RTCStatsReportEntry, StatsSelector,
};

/// The path a connection takes: straight between the peers, or through a TURN relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub relayed: bool,
    /// For people: "direct (host ↔ host)", "relayed (relay ↔ srflx)", …
    pub description: String,
}

impl Route {
    fn new(local: RTCIceCandidateType, remote: RTCIceCandidateType) -> Route {
        let relayed = local == RTCIceCandidateType::Relay || remote == RTCIceCandidateType::Relay;
        let how = if relayed { "relayed" } else { "direct" };
        Route {
            relayed,
            description: format!("{how} ({local} ↔ {remote})"),
        }
    }
}

/// The path of a peer connection's selected ICE candidate pair.
pub(super) async fn selected_route(pc: &Arc<dyn PeerConnection>) -> Option<Route> {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let pair_id = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
            Some(t.selected_candidate_pair_id.clone())
        }
        _ => None,
    })?;
    let (local_id, remote_id) = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::IceCandidatePair(pair) if pair.stats.id == pair_id => Some((
            pair.local_candidate_id.clone(),
            pair.remote_candidate_id.clone(),
        )),
        _ => None,
    })?;
    // webrtc 0.21 names candidates in a pair "candidate:X" but files the candidate
    // entries as "RTCLocalIceCandidate_candidate:X" / "RTCRemoteIceCandidate_…": accept both.
    let same = |entry_id: &str, prefix: &str, id: &str| {
        entry_id == id || entry_id.strip_prefix(prefix) == Some(id)
    };
    let local = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::LocalCandidate(c)
            if same(&c.stats.id, "RTCLocalIceCandidate_", &local_id) =>
        {
            Some(c.candidate_type)
        }
        _ => None,
    })?;
    let remote = report
        .iter()
        .find_map(|entry| match entry {
            RTCStatsReportEntry::RemoteCandidate(c)
                if same(&c.stats.id, "RTCRemoteIceCandidate_", &remote_id) =>
            {
                Some(c.candidate_type)
            }
            _ => None,
        })
        // A remote candidate learned from a connectivity check rather than signaled is not
        // listed; that is what ICE calls peer-reflexive.
        .unwrap_or(RTCIceCandidateType::Prflx);
    Some(Route::new(local, remote))
}

pub(super) async fn certificates(pc: &Arc<dyn PeerConnection>) -> Option<(String, String)> {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let (local_id, remote_id) = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::Transport(t)
            if !t.local_certificate_id.is_empty() && !t.remote_certificate_id.is_empty() =>
        {
            Some((
                t.local_certificate_id.clone(),
                t.remote_certificate_id.clone(),
            ))
        }
        _ => None,
    })?;
    let fingerprint = |id: &str| {
        report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::Certificate(cert) if cert.stats.id == id => {
                Some(cert.fingerprint.clone())
            }
            _ => None,
        })
    };
    Some((fingerprint(&local_id)?, fingerprint(&remote_id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_on_either_side_makes_the_route_relayed() {
        use RTCIceCandidateType::*;
        assert_eq!(
            Route::new(Host, Host),
            Route {
                relayed: false,
                description: "direct (host ↔ host)".into()
            }
        );
        assert!(!Route::new(Srflx, Prflx).relayed);
        assert!(Route::new(Relay, Host).relayed);
        assert!(Route::new(Srflx, Relay).relayed);
        assert!(Route::new(Relay, Relay).description.starts_with("relayed"));
    }
}
