//! The short authentication string (SAS) of a transfer signaled by hand (`--manual`):
//! without a code there is no PAKE key to bind the channel to, so both screens show six
//! digits derived from the two DTLS certificates the connection actually used, and a
//! person compares them. A man in the middle terminates DTLS twice with certificates of
//! its own, so the two sides' strings differ unless it finds a collision.
//!
//! It cannot search for one: the strings also cover a nonce from each side, exchanged
//! commit-first (as ZRTP does). The sender commits to its nonce before it sees the
//! receiver's and reveals it only after, so by the time an interceptor learns both
//! nonces of either side every input of both strings is fixed: one guess in 10⁶.

use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::TransferError;
use super::binding::Certificates;
use super::link::Link;
use super::sender::{control, send_control};
use super::wire::Control;
use crate::rendezvous::Role;

pub const NONCE_BYTES: usize = 32;

/// `SHA-256("p2pd/1 sas commit\0" ‖ nonce)`.
pub fn commitment(nonce: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"p2pd/1 sas commit\0");
    hash.update(nonce);
    hash.finalize().into()
}

/// The six digits both screens show, as `"123 456"`: the first four bytes of
/// `SHA-256("p2pd/1 sas\0" ‖ len ‖ offerer's fingerprint ‖ len ‖ answerer's fingerprint ‖
/// sender's nonce ‖ receiver's nonce)`, big-endian, modulo 10⁶. Fingerprints are the
/// SHA-256 ones, lowercase, colon-separated; each `len` is a big-endian u64.
pub fn sas(
    offerer_fingerprint: &str,
    answerer_fingerprint: &str,
    sender_nonce: &[u8],
    receiver_nonce: &[u8],
) -> String {
    let mut hash = Sha256::new();
    hash.update(b"p2pd/1 sas\0");
    for fingerprint in [offerer_fingerprint, answerer_fingerprint] {
        let normalized = fingerprint.trim().to_ascii_lowercase();
        hash.update((normalized.len() as u64).to_be_bytes());
        hash.update(normalized.as_bytes());
    }
    hash.update(sender_nonce);
    hash.update(receiver_nonce);
    let digest = hash.finalize();
    let value = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 1_000_000;
    format!("{:03} {:03}", value / 1000, value % 1000)
}

fn random_nonce() -> Zeroizing<[u8; NONCE_BYTES]> {
    let mut nonce = Zeroizing::new([0u8; NONCE_BYTES]);
    rand::rngs::OsRng.fill_bytes(nonce.as_mut());
    nonce
}

fn nonce_from_hex(text: &str) -> Result<[u8; NONCE_BYTES], TransferError> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| <[u8; NONCE_BYTES]>::try_from(bytes).ok())
        .ok_or(TransferError::SasBroken)
}

/// The next message, which must be `want`'s kind; anything else first is a broken
/// exchange (nothing else is read before it completes).
async fn expect(link: &dyn Link, want: &str) -> Result<Control, TransferError> {
    let message = tokio::time::timeout(super::FLUSH_LIMIT * 2, link.recv())
        .await
        .map_err(|_| TransferError::SasBroken)?;
    match control(message) {
        Ok(message) if message.kind() == want => Ok(message),
        Ok(Control::Cancel { reason }) => Err(TransferError::PeerCancelled(
            super::names::peer_text(&reason),
        )),
        Ok(_) | Err(TransferError::Protocol(_)) => Err(TransferError::SasBroken),
        Err(other) => Err(other),
    }
}

/// Runs the commit-first nonce exchange as `role` (the sender offered the connection)
/// and returns the string to show.
pub async fn exchange(
    transport: &dyn Certificates,
    link: &dyn Link,
    role: Role,
) -> Result<String, TransferError> {
    let Some((ours, theirs)) = transport.certificates().await else {
        return Err(TransferError::Unauthenticated);
    };
    let own = random_nonce();
    match role {
        Role::Sender => {
            let commit = hex::encode(commitment(own.as_ref()));
            send_control(link, &Control::SasCommit { commit }).await?;
            let Control::SasNonce { nonce } = expect(link, "sas_nonce").await? else {
                return Err(TransferError::SasBroken);
            };
            let peer = nonce_from_hex(&nonce)?;
            let reveal = hex::encode(own.as_ref());
            send_control(link, &Control::SasReveal { nonce: reveal }).await?;
            Ok(sas(&ours, &theirs, own.as_ref(), &peer))
        }
        Role::Receiver => {
            let Control::SasCommit { commit } = expect(link, "sas_commit").await? else {
                return Err(TransferError::SasBroken);
            };
            let nonce = hex::encode(own.as_ref());
            send_control(link, &Control::SasNonce { nonce }).await?;
            let Control::SasReveal { nonce } = expect(link, "sas_reveal").await? else {
                return Err(TransferError::SasBroken);
            };
            let peer = nonce_from_hex(&nonce)?;
            if hex::decode(&commit).ok().as_deref() != Some(commitment(&peer).as_slice()) {
                return Err(TransferError::SasBroken);
            }
            Ok(sas(&theirs, &ours, &peer, own.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERER: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
    const ANSWERER: &str = "10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe";

    /// The vector docs/PROTOCOL.md quotes (and the pion peer in tests/pion checks against).
    #[test]
    fn the_documented_vector_holds() {
        let sender = [0x11u8; NONCE_BYTES];
        let receiver = [0x22u8; NONCE_BYTES];
        assert_eq!(
            hex::encode(commitment(&sender)),
            "40e534ff9d30f6b6718b0e3625e4cae43c3cef112228b21f0b803e5b8afd7cd0"
        );
        // Computed independently (Python hashlib) when the vector was written.
        assert_eq!(sas(OFFERER, ANSWERER, &sender, &receiver), "804 430");
    }

    #[test]
    fn both_sides_compute_the_same_string_and_any_input_changes_it() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let base = sas(OFFERER, ANSWERER, &a, &b);
        assert_eq!(base.len(), 7);
        assert_eq!(base, sas(&OFFERER.to_lowercase(), ANSWERER, &a, &b));
        assert_ne!(base, sas(ANSWERER, OFFERER, &a, &b));
        assert_ne!(base, sas(OFFERER, ANSWERER, &b, &a));
        assert_ne!(base, sas(OFFERER, ANSWERER, &a, &[3u8; 32]));
    }
}
