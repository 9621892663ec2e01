//! Reaching a paired device without a code. Pure: secrets, names and messages.
//!
//! A pairing leaves both devices holding a *pair secret* (derived from the pairing
//! session's key, so only those two have it). Each daemon listens on the rendezvous at
//! one *mailbox* per paired device — an opaque channel name derived one-way from the pair
//! secret and the listener's public key — so the rendezvous sees neither identities nor
//! names, and one device's mailboxes cannot be linked to each other by their names. A
//! session opened there (`Session::between_devices`) proves the pair secret; then each
//! side signs a [`transcript`] of that session's binding key and both identity keys with
//! its Ed25519 key, so a stolen `devices.json` alone does not let anyone pose as a device.
//! The binding key is then proven over both DTLS certificates by the channel proof, as
//! on the coded path, which carries the identity signatures over to the data channel.

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::identity::{Identity, verify};
use crate::rendezvous::Role;
use crate::rendezvous::crypto::Secret;

/// The secret two paired devices share. Wiped on drop; its `Debug` shows no byte; kept in
/// `devices.json` (0600) as hex.
#[derive(Clone)]
pub struct PairSecret(Secret);

impl PairSecret {
    /// Derived from the pairing session's binding key: both sides compute the same.
    pub fn from_pairing(binding_key: &[u8; 32]) -> PairSecret {
        PairSecret(expand(
            b"p2pd/1 pair secret",
            binding_key,
            b"paired devices",
        ))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> PairSecret {
        PairSecret(Secret::from_bytes(bytes))
    }
}

impl std::ops::Deref for PairSecret {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PairSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairSecret(redacted)")
    }
}

impl PartialEq for PairSecret {
    fn eq(&self, other: &PairSecret) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&*other.0).into()
    }
}
impl Eq for PairSecret {}

impl Serialize for PairSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(hex::encode(*self.0));
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for PairSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.as_str(), bytes.as_mut())
            .map_err(|_| serde::de::Error::custom("a pair secret is 32 bytes of hex"))?;
        Ok(PairSecret::from_bytes(&bytes))
    }
}

fn expand(salt: &[u8], ikm: &[u8], info: &[u8]) -> Secret {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf.expand(info, out.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Secret::from_bytes(&out)
}

/// The rendezvous channel where the device with public key `to` waits for the one it
/// shares `secret` with: 64 hex digits, like a job's rejoin channel.
pub fn mailbox(secret: &PairSecret, to: &[u8; 32]) -> String {
    let name = expand(b"p2pd/1 mailbox", &**secret, to);
    hex::encode(*name)
}

/// Bytes of the nonce in a LAN ask.
pub const LAN_NONCE_BYTES: usize = 16;

/// Bytes of the challenge every daemon answers a LAN ask with.
pub const LAN_CHALLENGE_BYTES: usize = 16;

/// `HMAC-SHA256(K_ask, parts…)`, with `K_ask = HKDF(salt "p2pd/1 lan ask", ikm S, info
/// P_to)`: only the two devices of the pairing can compute it, for the device `to`.
fn lan_mac(secret: &PairSecret, to: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let key = expand(b"p2pd/1 lan ask", &**secret, to);
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&*key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// What a sender asks each daemon on its LAN instead of naming the mailbox (a name that
/// never changes would let every network a device visits recognise the pair): a fresh
/// nonce and `HMAC-SHA256(K_ask, nonce)`. Only the device that shares `S` and owns `P_to`
/// can tell it is meant — but anyone can record it and play it again elsewhere, so it
/// never makes the device answer by itself: see [`lan_proof`].
pub fn lan_ask(secret: &PairSecret, to: &[u8; 32], nonce: &[u8]) -> [u8; 32] {
    lan_mac(secret, to, &[nonce])
}

/// Whether a LAN ask is meant for `to` (constant time).
pub fn lan_ask_matches(secret: &PairSecret, to: &[u8; 32], nonce: &[u8], tag: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    nonce.len() == LAN_NONCE_BYTES && lan_ask(secret, to, nonce).ct_eq(tag).into()
}

/// The asker's answer to the challenge a daemon sent back: `HMAC-SHA256(K_ask, "p2pd/1 lan
/// proof\0" ‖ nonce ‖ challenge)`. The challenge is fresh from the daemon asked, so a
/// recorded ask (and any proof recorded with it) proves nothing to a device met later, on
/// this network or another: only a holder of `K_ask` answers a new challenge. The label,
/// and a length no ask's tag covers (a tag covers the 16-byte nonce alone), keep a proof
/// and a tag apart, so neither can stand for the other.
pub fn lan_proof(secret: &PairSecret, to: &[u8; 32], nonce: &[u8], challenge: &[u8]) -> [u8; 32] {
    lan_mac(secret, to, &[b"p2pd/1 lan proof\0", nonce, challenge])
}

/// The answering daemon's decision (constant time): the ask is meant for `to` and its
/// proof answers this connection's `challenge`. Only then does it say `here`.
pub fn lan_ask_proven(
    secret: &PairSecret,
    to: &[u8; 32],
    (nonce, tag): (&[u8], &[u8]),
    challenge: &[u8],
    proof: &[u8],
) -> bool {
    use subtle::ConstantTimeEq;
    let meant = lan_ask_matches(secret, to, nonce, tag);
    let fresh = challenge.len() == LAN_CHALLENGE_BYTES
        && bool::from(lan_proof(secret, to, nonce, challenge).ct_eq(proof));
    // Both computed, whichever fails: the time taken says nothing of which.
    meant & fresh
}

/// What a side signs once the session is open: `"p2pd/1 device session\0" ‖ role ‖
/// binding key ‖ signer's public key ‖ the other's public key`. The binding key is this
/// session's alone, so a signature cannot be replayed into another.
pub fn transcript(
    binding_key: &[u8; 32],
    role: Role,
    signer: &[u8; 32],
    other: &[u8; 32],
) -> Vec<u8> {
    let label: &[u8] = match role {
        Role::Sender => b"sender",
        Role::Receiver => b"receiver",
    };
    [
        b"p2pd/1 device session\0".as_slice(),
        label,
        binding_key,
        signer,
        other,
    ]
    .concat()
}

/// Messages sealed in a session between paired devices, in order: the sender's `hello`,
/// the receiver's `hello` (or `refused`), then the sender's purpose (`transfer`, `ping`,
/// or `unpair`, which is answered `forgotten`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceMessage {
    /// This side's Ed25519 signature (hex) over [`transcript`].
    Hello { signature: String },
    /// The receiver did not accept the sender's hello; nothing follows.
    Refused,
    /// A transfer follows, exactly as on the coded path (offer, answer, candidates).
    Transfer,
    /// The sender forgot this pairing and asks the receiver to forget it too.
    Unpair,
    /// The sender only wanted to know the receiver is online (`p2p devices`): nothing
    /// follows.
    Ping,
    /// The receiver forgot the pairing.
    Forgotten,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("the other device sent a malformed message")]
    Malformed,
    #[error(
        "the other device could not prove it holds its identity key (a copied devices.json, or someone in between): refused"
    )]
    BadSignature,
}

/// This side's hello.
pub fn hello(
    identity: &Identity,
    binding_key: &[u8; 32],
    role: Role,
    peer: &[u8; 32],
) -> DeviceMessage {
    let ours = identity.public_key();
    DeviceMessage::Hello {
        signature: hex::encode(identity.sign(&transcript(binding_key, role, &ours, peer))),
    }
}

/// Checks the peer's hello: signed by `peer` (the key stored at pairing) over this
/// session, in the peer's role, to us.
pub fn check_hello(
    message: &DeviceMessage,
    binding_key: &[u8; 32],
    peer_role: Role,
    peer: &[u8; 32],
    ours: &[u8; 32],
) -> Result<(), DeviceError> {
    let DeviceMessage::Hello { signature } = message else {
        return Err(DeviceError::Malformed);
    };
    let signature = hex::decode(signature).map_err(|_| DeviceError::Malformed)?;
    if verify(
        peer,
        &transcript(binding_key, peer_role, peer, ours),
        &signature,
    ) {
        Ok(())
    } else {
        Err(DeviceError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        (dir, identity)
    }

    #[test]
    fn both_sides_derive_one_pair_secret_and_distinct_mailboxes() {
        let a = PairSecret::from_pairing(&[1; 32]);
        assert_eq!(a, PairSecret::from_pairing(&[1; 32]));
        assert_ne!(a, PairSecret::from_pairing(&[2; 32]));
        assert_ne!(*a, [1; 32], "the pairing's key itself is never kept");
        let to_laptop = mailbox(&a, &[5; 32]);
        let to_phone = mailbox(&a, &[6; 32]);
        assert_eq!(to_laptop.len(), 64);
        assert!(to_laptop.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(to_laptop, to_phone, "each direction has its own mailbox");
        assert_ne!(
            to_laptop,
            mailbox(&PairSecret::from_pairing(&[2; 32]), &[5; 32]),
            "another pairing's mailbox for the same device differs"
        );
        assert_eq!(format!("{a:?}"), "PairSecret(redacted)");
    }

    #[test]
    fn a_lan_ask_is_fresh_each_time_and_recognised_only_by_its_device() {
        let secret = PairSecret::from_bytes(&[1; 32]);
        let (laptop, phone) = ([5u8; 32], [6u8; 32]);
        let tag = lan_ask(&secret, &laptop, &[9; LAN_NONCE_BYTES]);
        assert!(lan_ask_matches(
            &secret,
            &laptop,
            &[9; LAN_NONCE_BYTES],
            &tag
        ));
        assert_ne!(
            tag,
            lan_ask(&secret, &laptop, &[8; LAN_NONCE_BYTES]),
            "fresh each time"
        );
        assert!(!lan_ask_matches(
            &secret,
            &phone,
            &[9; LAN_NONCE_BYTES],
            &tag
        ));
        let other = PairSecret::from_bytes(&[2; 32]);
        assert!(!lan_ask_matches(
            &other,
            &laptop,
            &[9; LAN_NONCE_BYTES],
            &tag
        ));
        assert!(
            !lan_ask_matches(&secret, &laptop, &[9; 8], &tag),
            "a short nonce"
        );
    }

    #[test]
    fn a_lan_proof_answers_only_the_challenge_it_was_made_for() {
        let secret = PairSecret::from_bytes(&[1; 32]);
        let (laptop, phone) = ([5u8; 32], [6u8; 32]);
        let nonce = [9u8; LAN_NONCE_BYTES];
        let tag = lan_ask(&secret, &laptop, &nonce);
        let asked = (nonce.as_slice(), tag.as_slice());
        let first = [3u8; LAN_CHALLENGE_BYTES];
        let proof = lan_proof(&secret, &laptop, &nonce, &first);
        assert!(lan_ask_proven(&secret, &laptop, asked, &first, &proof));
        // The attack: an ask and its proof recorded, then played to the device, which
        // draws a new challenge.
        let later = [4u8; LAN_CHALLENGE_BYTES];
        assert!(
            !lan_ask_proven(&secret, &laptop, asked, &later, &proof),
            "a recorded proof answers no new challenge"
        );
        assert!(
            !lan_ask_proven(&secret, &laptop, asked, &later, &tag),
            "nor does the ask's own tag"
        );
        // Another device, another pairing, another ask, a short challenge.
        let other = PairSecret::from_bytes(&[2; 32]);
        assert!(!lan_ask_proven(&secret, &phone, asked, &first, &proof));
        assert!(!lan_ask_proven(&other, &laptop, asked, &first, &proof));
        let second = [8u8; LAN_NONCE_BYTES];
        let other_ask = (second.as_slice(), tag.as_slice());
        assert!(!lan_ask_proven(&secret, &laptop, other_ask, &first, &proof));
        let short = lan_proof(&secret, &laptop, &nonce, &first[..8]);
        assert!(!lan_ask_proven(
            &secret,
            &laptop,
            asked,
            &first[..8],
            &short
        ));
        // A proof is never a tag: the label and the length keep them apart.
        assert_ne!(proof, tag);
        assert_ne!(
            lan_proof(&secret, &laptop, &nonce, &[]),
            lan_ask(&secret, &laptop, &nonce)
        );
        assert!(!lan_ask_matches(&secret, &laptop, &nonce, &proof));
    }

    #[test]
    fn a_pair_secret_round_trips_through_json_as_hex() {
        let secret = PairSecret::from_bytes(&[0xab; 32]);
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<PairSecret>(&json).unwrap(), secret);
        assert!(serde_json::from_str::<PairSecret>("\"abcd\"").is_err());
    }

    #[test]
    fn a_hello_checks_out_only_from_its_key_in_its_session_role_and_to_us() {
        let (_a, laptop) = identity();
        let (_b, phone) = identity();
        let (_c, stranger) = identity();
        let (l, p) = (laptop.public_key(), phone.public_key());
        let binding = [9u8; 32];
        let from_laptop = hello(&laptop, &binding, Role::Sender, &p);
        assert_eq!(
            check_hello(&from_laptop, &binding, Role::Sender, &l, &p),
            Ok(())
        );
        // Another session, the other role, someone else's key, or meant for another device.
        for (binding, role, signer, to) in [
            ([8u8; 32], Role::Sender, l, p),
            (binding, Role::Receiver, l, p),
            (binding, Role::Sender, stranger.public_key(), p),
            (binding, Role::Sender, l, stranger.public_key()),
        ] {
            assert_eq!(
                check_hello(&from_laptop, &binding, role, &signer, &to),
                Err(DeviceError::BadSignature)
            );
        }
        // A stranger who copied the laptop's devices.json still signs with its own key.
        let posing = hello(&stranger, &binding, Role::Sender, &p);
        assert_eq!(
            check_hello(&posing, &binding, Role::Sender, &l, &p),
            Err(DeviceError::BadSignature)
        );
        assert_eq!(
            check_hello(&DeviceMessage::Transfer, &binding, Role::Sender, &l, &p),
            Err(DeviceError::Malformed)
        );
    }

    #[test]
    fn messages_are_tagged_json() {
        assert_eq!(
            serde_json::to_string(&DeviceMessage::Transfer).unwrap(),
            r#"{"type":"transfer"}"#
        );
        assert!(serde_json::from_str::<DeviceMessage>(r#"{"type":"nuke"}"#).is_err());
        assert!(
            serde_json::from_str::<DeviceMessage>(r#"{"type":"hello","signature":"00","x":1}"#)
                .is_err()
        );
    }
}
