//! Which of the other side's ICE candidates a peer connection keeps. Every address a
//! remote description or a trickled candidate names is one this side's ICE agent sends
//! connectivity checks to — before anyone has approved anything, and whoever wrote the
//! description (a pasted offer, a nearby daemon, a code's holder) chooses them. So a
//! candidate is dropped when it names this machine (loopback, unless this side is bound
//! to that very address, as the tests are), the link (link-local), no address
//! (unspecified), a group (multicast, broadcast), a name instead of an address, or
//! anything but UDP (the only transport this side gathers); the caller's policy may narrow
//! the rest (a nearby offer: this machine's subnets). A description listing more
//! endpoints than any device has is refused whole. Pure: text in, text out.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Distinct endpoints (address and port) a remote description may list, and trickled
/// candidates one attempt takes. A host lists each of its interfaces' addresses, plus one
/// reflexive and one relayed address per server: a few, a dozen with many interfaces.
pub const MAX_REMOTE_CANDIDATES: usize = 64;

/// A rule on remote addresses beyond the fixed ones, chosen by whoever builds the
/// connection.
#[derive(Clone, Default)]
pub struct CandidatePolicy(Rule);

#[derive(Clone, Default)]
enum Rule {
    /// Every address the fixed rules leave.
    #[default]
    Any,
    /// Only the addresses the function allows (after the fixed rules).
    Only(Arc<dyn Fn(IpAddr) -> bool + Send + Sync>),
    /// None of the description's addresses: this side checks only an address whose
    /// checks reached it first, carrying the description's ICE credentials (a
    /// peer-reflexive candidate). For a description from someone nobody approved yet (a
    /// nearby offer): the other side's checks find this side's host candidates, and this
    /// side answers only them instead of probing what the description names.
    AnswerOnly,
}

impl CandidatePolicy {
    /// Keeps only the addresses `allowed` accepts (after the fixed rules).
    pub fn only(allowed: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> CandidatePolicy {
        CandidatePolicy(Rule::Only(Arc::new(allowed)))
    }

    /// Keeps none of the description's candidates (not even a loopback one this side is
    /// bound to): see [`Rule::AnswerOnly`].
    pub fn answer_only() -> CandidatePolicy {
        CandidatePolicy(Rule::AnswerOnly)
    }
}

impl fmt::Debug for CandidatePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self.0 {
            Rule::Any => "any",
            Rule::Only(_) => "restricted",
            Rule::AnswerOnly => "answer only",
        };
        f.debug_tuple("CandidatePolicy").field(&rule).finish()
    }
}

/// A remote description that lists more endpoints than [`MAX_REMOTE_CANDIDATES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the other side's description lists {0} ICE candidates, more than the {max} p2pd takes from a peer (a device has a few): it was not used",
    max = MAX_REMOTE_CANDIDATES
)]
pub struct TooManyCandidates(pub usize);

/// The rules one peer connection applies to what the other side names.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    /// Loopback addresses this side is bound to: the only loopback ones checked.
    loopback: Vec<IpAddr>,
    policy: CandidatePolicy,
}

impl Filter {
    /// The rules for a connection bound to `bind` (`IP:PORT` each) under `policy`.
    pub(crate) fn new(bind: &[String], policy: &CandidatePolicy) -> Filter {
        let loopback = bind
            .iter()
            .filter_map(|b| b.parse::<SocketAddr>().ok())
            .map(|a| a.ip().to_canonical())
            .filter(IpAddr::is_loopback)
            .collect();
        Filter {
            loopback,
            policy: policy.clone(),
        }
    }

    /// Whether the candidate may be checked: `candidate` is an `a=candidate:` value or a
    /// trickled `candidate:…` string.
    pub(crate) fn keeps(&self, candidate: &str) -> bool {
        let Some((ip, _)) = endpoint(candidate) else {
            return false;
        };
        if matches!(self.policy.0, Rule::AnswerOnly) {
            return false;
        }
        if ip.is_loopback() {
            return self.loopback.contains(&ip);
        }
        if never_checked(ip) {
            return false;
        }
        match &self.policy.0 {
            Rule::Only(allowed) => allowed(ip),
            Rule::Any | Rule::AnswerOnly => true,
        }
    }

    /// `sdp` without the candidates this side may not check, and how many it dropped; a
    /// description listing too many endpoints is refused.
    pub(crate) fn sdp(&self, sdp: &str) -> Result<(String, usize), TooManyCandidates> {
        check_count(sdp)?;
        let mut kept = String::with_capacity(sdp.len());
        let mut dropped = 0;
        for line in sdp.split_inclusive('\n') {
            match candidate_value(line) {
                Some(value) if !self.keeps(value) => dropped += 1,
                _ => kept.push_str(line),
            }
        }
        Ok((kept, dropped))
    }
}

/// Refuses a description that lists more than [`MAX_REMOTE_CANDIDATES`] endpoints. (Each
/// endpoint appears once per component in descriptions such as p2pd's own: those count
/// once; a line that names no endpoint counts on its own.)
pub fn check_count(sdp: &str) -> Result<(), TooManyCandidates> {
    #[derive(PartialEq, Eq, Hash)]
    enum Listed {
        Endpoint(IpAddr, u16),
        Line(usize),
    }
    let listed: HashSet<Listed> = sdp
        .lines()
        .filter_map(candidate_value)
        .enumerate()
        .map(|(index, value)| match endpoint(value) {
            Some((ip, port)) => Listed::Endpoint(ip, port),
            None => Listed::Line(index),
        })
        .collect();
    match listed.len() {
        n if n > MAX_REMOTE_CANDIDATES => Err(TooManyCandidates(n)),
        _ => Ok(()),
    }
}

/// The value of an `a=candidate:` line (compared in any case and after spaces, so that
/// nothing the stack might read as a candidate passes unfiltered).
fn candidate_value(line: &str) -> Option<&str> {
    let attribute = strip_prefix_any_case(line.trim(), "a=")?;
    let (name, value) = attribute.split_once(':')?;
    name.trim()
        .eq_ignore_ascii_case("candidate")
        .then_some(value)
}

fn strip_prefix_any_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.get(..prefix.len())
        .filter(|start| start.eq_ignore_ascii_case(prefix))
        .map(|_| &text[prefix.len()..])
}

/// The UDP address and port a candidate names: `[candidate:]foundation component
/// transport priority address port typ type …` (RFC 8839). `None` for anything else: a
/// name, another transport, a short or damaged line.
fn endpoint(candidate: &str) -> Option<(IpAddr, u16)> {
    let candidate = candidate.trim();
    let candidate = strip_prefix_any_case(candidate, "candidate:").unwrap_or(candidate);
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    let [_, _, transport, _, address, port, typ, _, ..] = fields.as_slice() else {
        return None;
    };
    if !transport.eq_ignore_ascii_case("udp") || !typ.eq_ignore_ascii_case("typ") {
        return None;
    }
    let ip = address.parse::<IpAddr>().ok()?.to_canonical();
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    Some((ip, port))
}

/// Addresses no peer is reached at: no address, the link, groups.
fn never_checked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.octets()[0] == 0 || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_multicast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(address: &str, port: u16) -> String {
        format!("a=candidate:1 1 udp 2130706431 {address} {port} typ host\r\n")
    }

    fn bound_to(bind: &str) -> Filter {
        Filter::new(&[bind.to_owned()], &CandidatePolicy::default())
    }

    #[test]
    fn addresses_that_name_this_machine_the_link_or_a_group_are_dropped() {
        let anywhere = bound_to("0.0.0.0:0");
        for dropped in [
            "127.0.0.1",
            "127.0.0.2",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "169.254.1.1",
            "fe80::1",
            "febf::1",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "ff02::1",
            "localhost",
            "laptop.local",
            "fe80::1%eth0",
        ] {
            let candidate = format!("candidate:1 1 udp 1 {dropped} 47000 typ host");
            assert!(!anywhere.keeps(&candidate), "{dropped} kept");
        }
        for kept in [
            "192.168.1.20",
            "10.0.0.7",
            "203.0.113.5",
            "2001:db8::5",
            "fd00::5",
        ] {
            let candidate =
                format!("candidate:1 1 udp 1 {kept} 47000 typ srflx raddr 0.0.0.0 rport 0");
            assert!(anywhere.keeps(&candidate), "{kept} dropped");
        }
    }

    #[test]
    fn loopback_is_kept_only_at_the_very_address_this_side_is_bound_to() {
        let tests = bound_to("127.0.0.1:0");
        assert!(tests.keeps("candidate:1 1 udp 1 127.0.0.1 47000 typ host"));
        assert!(!tests.keeps("candidate:1 1 udp 1 127.0.0.2 47000 typ host"));
        assert!(!tests.keeps("candidate:1 1 udp 1 ::1 47000 typ host"));
        let six = bound_to("[::1]:0");
        assert!(six.keeps("candidate:1 1 udp 1 ::1 47000 typ host"));
        assert!(!six.keeps("candidate:1 1 udp 1 127.0.0.1 47000 typ host"));
    }

    #[test]
    fn only_udp_candidates_with_an_address_and_a_port_are_kept() {
        let anywhere = bound_to("0.0.0.0:0");
        for candidate in [
            "candidate:1 1 udp 1 192.168.1.20 47000 typ host",
            "1 1 UDP 1 192.168.1.20 47000 typ host",
            "  candidate:1 1 udp 1 192.168.1.20 47000 typ host generation 0",
        ] {
            assert!(anywhere.keeps(candidate), "{candidate}");
        }
        for candidate in [
            "candidate:1 1 tcp 1 192.168.1.20 47000 typ host tcptype passive",
            "candidate:1 1 udp 1 192.168.1.20 0 typ host",
            "candidate:1 1 udp 1 192.168.1.20 70000 typ host",
            "candidate:1 1 udp 1 192.168.1.20 47000",
            "candidate:1 1 udp 1 192.168.1.20 47000 type host",
            "",
        ] {
            assert!(!anywhere.keeps(candidate), "{candidate}");
        }
    }

    #[test]
    fn a_policy_narrows_what_is_left_but_never_widens_it() {
        let lan = CandidatePolicy::only(
            |ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [192, 168, 1]),
        );
        let filter = Filter::new(&["127.0.0.1:0".to_owned()], &lan);
        assert!(filter.keeps("candidate:1 1 udp 1 192.168.1.20 47000 typ host"));
        assert!(!filter.keeps("candidate:1 1 udp 1 192.168.2.20 47000 typ host"));
        assert!(!filter.keeps("candidate:1 1 udp 1 203.0.113.5 47000 typ srflx"));
        // The address this side is bound to stays, as it does without a policy.
        assert!(filter.keeps("candidate:1 1 udp 1 127.0.0.1 47000 typ host"));
        let everything = CandidatePolicy::only(|_| true);
        let filter = Filter::new(&["0.0.0.0:0".to_owned()], &everything);
        assert!(!filter.keeps("candidate:1 1 udp 1 169.254.0.1 47000 typ host"));
        assert!(format!("{lan:?}").contains("restricted"));
    }

    #[test]
    fn answer_only_keeps_no_candidate_at_all() {
        let filter = Filter::new(&["127.0.0.1:0".to_owned()], &CandidatePolicy::answer_only());
        for candidate in [
            "candidate:1 1 udp 1 192.168.1.20 47000 typ host",
            "candidate:1 1 udp 1 127.0.0.1 47000 typ host",
            "candidate:1 1 udp 1 203.0.113.5 47000 typ srflx",
        ] {
            assert!(!filter.keeps(candidate), "{candidate}");
        }
        let sdp = format!(
            "v=0\r\n{}a=end-of-candidates\r\n",
            line("192.168.1.20", 47001)
        );
        let (kept, dropped) = filter.sdp(&sdp).unwrap();
        assert_eq!(
            (kept.as_str(), dropped),
            ("v=0\r\na=end-of-candidates\r\n", 1)
        );
    }

    #[test]
    fn a_description_loses_its_dropped_candidates_and_keeps_every_other_line() {
        let sdp = format!(
            "v=0\r\na=ice-ufrag:abcd\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n{}{}{}  A=Candidate:1 1 udp 1 127.0.0.9 9 typ host\r\na=candidate-extra:x\r\na=end-of-candidates\r\n",
            line("127.0.0.2", 47000),
            line("192.168.1.20", 47001),
            line("169.254.3.3", 47002),
        );
        let (kept, dropped) = bound_to("127.0.0.1:0").sdp(&sdp).unwrap();
        assert_eq!(dropped, 3);
        assert_eq!(
            kept,
            format!(
                "v=0\r\na=ice-ufrag:abcd\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n{}a=candidate-extra:x\r\na=end-of-candidates\r\n",
                line("192.168.1.20", 47001)
            )
        );
        // Nothing to drop: the same text, byte for byte ("\n" endings too).
        let plain = "v=0\na=candidate:1 1 udp 1 10.0.0.7 5000 typ host\n";
        assert_eq!(
            bound_to("0.0.0.0:0").sdp(plain).unwrap(),
            (plain.to_owned(), 0)
        );
    }

    #[test]
    fn a_description_with_more_endpoints_than_a_device_has_is_refused() {
        let endpoints = |n: u16| -> String {
            (0..n)
                .flat_map(|i| {
                    // Each endpoint once per component, as p2pd lists them.
                    let one = line("192.168.1.20", 40000 + i);
                    [one.clone(), one.replacen(" 1 udp", " 2 udp", 1)]
                })
                .collect()
        };
        let most = endpoints(MAX_REMOTE_CANDIDATES as u16);
        assert!(check_count(&most).is_ok());
        assert!(bound_to("0.0.0.0:0").sdp(&most).is_ok());
        let error = check_count(&endpoints(700)).unwrap_err();
        assert_eq!(error, TooManyCandidates(700));
        assert!(!error.to_string().contains('\n'));
        assert!(error.to_string().contains("700 ICE candidates"), "{error}");
        // Lines naming no endpoint count each on their own, so junk cannot slip past.
        let junk: String = (0..=MAX_REMOTE_CANDIDATES)
            .map(|i| format!("a=candidate:{i} 1 udp 1 host{i}.example 5000 typ host\r\n"))
            .collect();
        assert_eq!(
            check_count(&junk),
            Err(TooManyCandidates(MAX_REMOTE_CANDIDATES + 1))
        );
    }
}
