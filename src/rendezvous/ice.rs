//! The ICE servers the rendezvous hands to each paired daemon, so no machine needs its own
//! STUN/TURN set-up. TURN credentials follow the TURN REST scheme coturn implements
//! (`use-auth-secret`): username `EXPIRY:PAIR`, password base64(HMAC-SHA1(secret,
//! username)), so they expire on their own and clients never hold the shared secret. `PAIR`
//! is random per pairing, so coturn's per-user quotas (`user-quota`) and its logs count
//! each pairing on its own (issue #23). Pure: the caller passes the time and the pair's
//! name in.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::messages::IceServerInfo;

/// How long a handed-out TURN credential stays valid: long enough to gather candidates
/// and connect right after pairing. A transfer keeps its allocation past it (refreshes
/// need no new credential in coturn), and a resume pairs again and gets a fresh one.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Default)]
pub struct IceHandout {
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    /// coturn's `static-auth-secret`; without it TURN URLs are not handed out.
    pub turn_secret: Option<Vec<u8>>,
    pub credential_ttl: Duration,
}

impl IceHandout {
    /// The servers for one paired client, with credentials valid from `now_unix`.
    /// STUN only: what a pair gets before both sides have done their key exchange.
    pub fn stun_only(&self) -> Vec<IceServerInfo> {
        if self.stun.is_empty() {
            return Vec::new();
        }
        vec![IceServerInfo {
            urls: self.stun.clone(),
            username: String::new(),
            credential: String::new(),
        }]
    }

    /// STUN, and TURN with a credential for the pairing named `pair` (any string without
    /// a colon; random per pairing).
    pub fn for_pair(&self, now_unix: u64, pair: &str) -> Vec<IceServerInfo> {
        let mut servers = self.stun_only();
        if let (false, Some(secret)) = (self.turn.is_empty(), &self.turn_secret) {
            let expiry = now_unix.saturating_add(self.credential_ttl.as_secs());
            let username = format!("{expiry}:{pair}");
            servers.push(IceServerInfo {
                urls: self.turn.clone(),
                credential: turn_rest_password(secret, &username),
                username,
            });
        }
        servers
    }
}

/// The TURN REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn turn_rest_password(secret: &[u8], username: &str) -> String {
    let mut mac =
        <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_the_published_scheme() {
        // draft-uberti-behave-turn-rest / coturn: HMAC-SHA1 over the username, base64.
        // Reference computed with: printf %s '1700000000:p2pd' | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            turn_rest_password(b"secret", "1700000000:p2pd"),
            "YtBNrvoHfcyDkglHnq+0gpHI93A="
        );
    }

    #[test]
    fn turn_needs_a_secret_and_credentials_expire() {
        let mut handout = IceHandout {
            stun: vec!["stun:198.51.100.1:3478".into()],
            turn: vec!["turn:198.51.100.1:3478".into()],
            turn_secret: None,
            credential_ttl: Duration::from_secs(60),
        };
        let servers = handout.for_pair(1000, "ab12");
        assert_eq!(servers.len(), 1, "no TURN without a secret: {servers:?}");
        handout.turn_secret = Some(b"s".to_vec());
        let servers = handout.for_pair(1000, "ab12");
        assert_eq!(servers[1].username, "1060:ab12");
        assert_eq!(servers[1].credential, turn_rest_password(b"s", "1060:ab12"));
        assert_eq!(handout.stun_only(), servers[..1], "before the key exchange");
        assert!(IceHandout::default().for_pair(0, "x").is_empty());
        assert!(
            DEFAULT_CREDENTIAL_TTL <= Duration::from_secs(15 * 60),
            "minutes, not hours"
        );
    }
}
