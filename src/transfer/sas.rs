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

    /// One end of an in-memory channel pair.
    struct Pipe {
        tx: tokio::sync::mpsc::UnboundedSender<String>,
        rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
    }

    fn pipes() -> (Pipe, Pipe) {
        let (a_tx, a_rx) = tokio::sync::mpsc::unbounded_channel();
        let (b_tx, b_rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Pipe {
                tx: a_tx,
                rx: tokio::sync::Mutex::new(b_rx),
            },
            Pipe {
                tx: b_tx,
                rx: tokio::sync::Mutex::new(a_rx),
            },
        )
    }

    #[async_trait::async_trait]
    impl Link for Pipe {
        async fn send_text(&self, text: String) -> Result<(), super::super::link::LinkClosed> {
            self.tx
                .send(text)
                .map_err(|_| super::super::link::LinkClosed)
        }
        async fn writable(&self) {}
        async fn send_binary(
            &self,
            _data: bytes::BytesMut,
        ) -> Result<(), super::super::link::LinkClosed> {
            Err(super::super::link::LinkClosed)
        }
        async fn recv(&self) -> Option<super::super::link::Incoming> {
            self.rx
                .lock()
                .await
                .recv()
                .await
                .map(super::super::link::Incoming::Text)
        }
        async fn flush(&self, _limit: std::time::Duration) {}
    }

    /// What each end's DTLS reports: (own, peer's).
    struct Seen(&'static str, &'static str);

    #[async_trait::async_trait]
    impl Certificates for Seen {
        async fn certificates(&self) -> Option<(String, String)> {
            Some((self.0.into(), self.1.into()))
        }
    }

    #[tokio::test]
    async fn two_honest_ends_show_the_same_string() {
        let (a, b) = pipes();
        let (ours, theirs) = (Seen(OFFERER, ANSWERER), Seen(ANSWERER, OFFERER));
        let (sender, receiver) = tokio::join!(
            exchange(&ours, &a, Role::Sender),
            exchange(&theirs, &b, Role::Receiver)
        );
        assert_eq!(sender.unwrap(), receiver.unwrap());
    }

    #[tokio::test]
    async fn ends_that_saw_other_certificates_show_different_strings() {
        let (a, b) = pipes();
        let other = "ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff:ff";
        let (ours, theirs) = (Seen(OFFERER, other), Seen(ANSWERER, OFFERER));
        let (sender, receiver) = tokio::join!(
            exchange(&ours, &a, Role::Sender),
            exchange(&theirs, &b, Role::Receiver)
        );
        assert_ne!(sender.unwrap(), receiver.unwrap());
    }

    #[tokio::test]
    async fn a_nonce_other_than_the_committed_one_is_refused() {
        let (a, b) = pipes();
        let cheat = async {
            let commit = hex::encode(commitment(&[5u8; NONCE_BYTES]));
            a.send_text(Control::SasCommit { commit }.encode())
                .await
                .unwrap();
            let _nonce = a.recv().await;
            let nonce = hex::encode([6u8; NONCE_BYTES]);
            a.send_text(Control::SasReveal { nonce }.encode())
                .await
                .unwrap();
        };
        let theirs = Seen(ANSWERER, OFFERER);
        let (_, receiver) = tokio::join!(cheat, exchange(&theirs, &b, Role::Receiver));
        assert!(matches!(receiver, Err(TransferError::SasBroken)));
    }

    #[tokio::test]
    async fn anything_but_the_exchange_first_is_refused() {
        let (a, b) = pipes();
        a.send_text(Control::Accept.encode()).await.unwrap();
        let receiver = exchange(&Seen(ANSWERER, OFFERER), &b, Role::Receiver).await;
        assert!(matches!(receiver, Err(TransferError::SasBroken)));
    }
}
