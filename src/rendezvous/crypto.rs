//! The key exchange and the sealing of signaling messages. Pure: bytes in, bytes out.
//!
//! Both daemons run SPAKE2 (sender = side A, receiver = side B) with the whole code as the
//! password. From the shared key, HKDF derives one key-confirmation key per side and one
//! AEAD key per direction, so a message can be neither reflected back to its sender nor
//! replayed or reordered (each carries a sequence number the opener insists on).
//!
//! Every secret here lives in a `Zeroizing` buffer (the AEAD keys inside `ChaCha20Poly1305`
//! wipe themselves), and no type holding one implements `Debug`, so a key can neither
//! outlive its use in freed memory nor be formatted into a log by accident.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use super::code::Code;

const ID_SENDER: &[u8] = b"p2pd/1 sender";
const ID_RECEIVER: &[u8] = b"p2pd/1 receiver";

/// 32 secret bytes: wiped on drop, and its `Debug` prints no byte of them. Derefs to
/// `[u8; 32]`, so `&secret` goes wherever a `&[u8; 32]` is expected.
#[derive(Clone)]
pub struct Secret(Zeroizing<[u8; 32]>);

/// The `Zeroizing` inside does the wiping; this marker says so to callers' bounds.
impl zeroize::ZeroizeOnDrop for Secret {}

impl Secret {
    fn zero() -> Secret {
        Secret(Zeroizing::new([0; 32]))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Secret {
        Secret(Zeroizing::new(*bytes))
    }
}

impl std::ops::Deref for Secret {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Which end of the transfer this daemon is; it fixes the SPAKE2 side and the key labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Sender => b"sender",
            Role::Receiver => b"receiver",
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the peer's key-exchange message is malformed")]
    BadPakeMessage,
    #[error("wrong code, or someone tried to guess it")]
    WrongCode,
    #[error("a signaling message failed authentication, or arrived out of order")]
    BadSeal,
}

/// The first half of the exchange: our SPAKE2 state and the message to send.
pub struct Pake {
    state: Spake2<Ed25519Group>,
    role: Role,
}

impl Pake {
    pub fn start(role: Role, code: &Code) -> (Pake, Vec<u8>) {
        Pake::start_with(role, code, (ID_SENDER, ID_RECEIVER))
    }

    /// `start` with other SPAKE2 identities (side A's, side B's), for another purpose
    /// than a transfer (pairing), so that neither exchange can complete the other.
    pub fn start_with(role: Role, code: &Code, identities: (&[u8], &[u8])) -> (Pake, Vec<u8>) {
        let password = Password::new(code.password().as_bytes());
        let (id_a, id_b) = (Identity::new(identities.0), Identity::new(identities.1));
        let (state, msg) = match role {
            Role::Sender => Spake2::<Ed25519Group>::start_a(&password, &id_a, &id_b),
            Role::Receiver => Spake2::<Ed25519Group>::start_b(&password, &id_a, &id_b),
        };
        (Pake { state, role }, msg)
    }

    /// `start` with a given RNG, for test vectors.
    #[cfg(test)]
    pub(super) fn start_with_rng(
        role: Role,
        code: &Code,
        rng: impl rand::CryptoRng + rand::RngCore,
    ) -> (Pake, Vec<u8>) {
        let password = Password::new(code.password().as_bytes());
        let (id_a, id_b) = (Identity::new(ID_SENDER), Identity::new(ID_RECEIVER));
        let (state, msg) = match role {
            Role::Sender => Spake2::<Ed25519Group>::start_a_with_rng(&password, &id_a, &id_b, rng),
            Role::Receiver => {
                Spake2::<Ed25519Group>::start_b_with_rng(&password, &id_a, &id_b, rng)
            }
        };
        (Pake { state, role }, msg)
    }

    pub fn finish(self, peer_msg: &[u8]) -> Result<SessionKeys, CryptoError> {
        let key = Zeroizing::new(
            self.state
                .finish(peer_msg)
                .map_err(|_| CryptoError::BadPakeMessage)?,
        );
        Ok(SessionKeys::new(&key, self.role))
    }
}

/// Keys derived from the PAKE output. Not yet trusted until the peer's confirmation
/// checks out: with a wrong code both sides still get *a* key, just different ones.
pub struct SessionKeys {
    role: Role,
    /// HKDF's pseudo-random key, kept rather than an `Hkdf` (which would not wipe it).
    prk: Secret,
    /// The long-lived secret later sessions of the same job are keyed from.
    resume: Secret,
}

/// HKDF-Extract into a buffer that is wiped on drop.
fn extract(salt: &[u8], ikm: &[u8]) -> Secret {
    let (mut prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    let mut out = Secret::zero();
    out.0.copy_from_slice(&prk);
    zeroize::Zeroize::zeroize(prk.as_mut_slice());
    out
}

/// Bytes each side contributes to a resumed session's keys, so no two sessions of one job
/// ever share a key (and so a nonce).
pub const RESUME_NONCE_BYTES: usize = 32;

impl SessionKeys {
    fn new(pake_key: &[u8], role: Role) -> SessionKeys {
        let mut keys = SessionKeys {
            role,
            prk: extract(b"p2pd/1 signaling", pake_key),
            resume: Secret::zero(),
        };
        keys.resume = keys.derive(b"resume", Role::Sender);
        keys
    }

    /// Keys for a later session of a job, from its resume secret and both sides' fresh
    /// nonces. Confirmation then proves the peer holds the same secret.
    pub fn resumed(
        secret: &[u8; 32],
        role: Role,
        sender_nonce: &[u8],
        receiver_nonce: &[u8],
    ) -> SessionKeys {
        let salt = [b"p2pd/1 resume".as_slice(), sender_nonce, receiver_nonce].concat();
        SessionKeys {
            role,
            prk: extract(&salt, secret),
            resume: Secret::from_bytes(secret),
        }
    }

    /// Keys for a session between two paired devices, from their pair secret and both
    /// sides' fresh nonces. Unlike [`SessionKeys::resumed`], the session's resume secret is
    /// its own (derived from the nonces), so each job started this way resumes on a
    /// channel of its own.
    ///
    /// The receiving device's public key is in the salt, so a session meant for one side
    /// cannot be looped back into the sender's own listener (both hold the pair secret).
    pub fn between_devices(
        pair_secret: &[u8; 32],
        role: Role,
        (sender_nonce, receiver_nonce): (&[u8], &[u8]),
        receiver_key: &[u8; 32],
    ) -> SessionKeys {
        let salt = [
            b"p2pd/1 device session".as_slice(),
            sender_nonce,
            receiver_nonce,
            receiver_key,
        ]
        .concat();
        let mut keys = SessionKeys {
            role,
            prk: extract(&salt, pair_secret),
            resume: Secret::zero(),
        };
        keys.resume = keys.derive(b"resume", Role::Sender);
        keys
    }

    fn derive(&self, purpose: &[u8], role: Role) -> Secret {
        let mut out = Secret::zero();
        let info = [purpose, b" ", role.label()].concat();
        // A PRK of the hash's length is always accepted, and HKDF-SHA256 can expand up to
        // 8160 bytes, so neither step fails.
        Hkdf::<Sha256>::from_prk(self.prk.as_slice())
            .expect("a 32-byte PRK is valid for HKDF-SHA256")
            .expand(&info, out.0.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    fn confirmation_mac(&self, role: Role) -> Hmac<Sha256> {
        let key = self.derive(b"confirm", role);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice())
            .expect("HMAC accepts keys of any length");
        mac.update(b"key confirmation");
        mac
    }

    /// The tag we send to prove we hold the same key.
    pub fn our_confirmation(&self) -> [u8; 32] {
        self.confirmation_mac(self.role)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks the peer's tag in constant time and, if it matches, opens the sealed channel.
    pub fn confirm(self, peer_tag: &[u8]) -> Result<SealedChannel, CryptoError> {
        self.confirmation_mac(self.role.peer())
            .verify_slice(peer_tag)
            .map_err(|_| CryptoError::WrongCode)?;
        let seal_key = self.derive(b"seal", self.role);
        let open_key = self.derive(b"seal", self.role.peer());
        Ok(SealedChannel {
            binding: self.derive(b"channel binding", Role::Sender),
            resume: self.resume,
            role: self.role,
            seal: ChaCha20Poly1305::new(Key::from_slice(seal_key.as_slice())),
            open: ChaCha20Poly1305::new(Key::from_slice(open_key.as_slice())),
            next_send: 0,
            next_recv: 0,
        })
    }
}

/// Seals our signaling messages and opens the peer's, in order.
pub struct SealedChannel {
    resume: Secret,
    /// Shared by both sides (derived with the sender's label on both ends, see `binding_key`).
    binding: Secret,
    role: Role,
    seal: ChaCha20Poly1305,
    open: ChaCha20Poly1305,
    next_send: u64,
    next_recv: u64,
}

const SEQ_LEN: usize = 8;

fn nonce(seq: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    *Nonce::from_slice(&bytes)
}

impl SealedChannel {
    /// This side's role in the pairing.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Key for the data-channel binding proof. Both sides must derive the same key, so
    /// the label is fixed rather than role-dependent; see [`channel_proof`].
    pub fn binding_key(&self) -> Secret {
        self.binding.clone()
    }

    /// The job's resume secret: both sides hold it, the rendezvous never sees it.
    pub fn resume_secret(&self) -> Secret {
        self.resume.clone()
    }

    /// `seq || AEAD(plaintext)`, with the sequence number also bound as associated data.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let seq = self.next_send;
        self.next_send += 1;
        let aad = seq.to_be_bytes();
        let sealed = self
            .seal
            .encrypt(
                &nonce(seq),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("ChaCha20Poly1305 encryption only fails past 256 GiB per message");
        [aad.as_slice(), &sealed].concat()
    }

    pub fn open(&mut self, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if blob.len() < SEQ_LEN {
            return Err(CryptoError::BadSeal);
        }
        let (seq_bytes, sealed) = blob.split_at(SEQ_LEN);
        let seq = u64::from_be_bytes(seq_bytes.try_into().map_err(|_| CryptoError::BadSeal)?);
        if seq != self.next_recv {
            return Err(CryptoError::BadSeal);
        }
        let plain = self
            .open
            .decrypt(
                &nonce(seq),
                Payload {
                    msg: sealed,
                    aad: seq_bytes,
                },
            )
            .map_err(|_| CryptoError::BadSeal)?;
        self.next_recv += 1;
        Ok(plain)
    }
}

/// Where the two sides of a job meet again at the rendezvous: derived one-way from the
/// resume secret, so the rendezvous learns nothing that opens the session.
pub fn rejoin_channel(secret: &[u8; 32]) -> String {
    let hkdf = Hkdf::<Sha256>::new(Some(b"p2pd/1 rejoin"), secret);
    // Not secret (the rendezvous sees it), but one step from the secret: wipe it anyway.
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf.expand(b"rendezvous channel", out.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    hex::encode(out.as_slice())
}

/// The first data-channel message's proof: `role` holds the PAKE key and sees exactly
/// these DTLS certificates (`own` is the certificate it presented, `peer` the one it got).
/// A man in the middle terminates DTLS twice with its own certificates, so the proofs
/// the two ends compute cannot both match what the other expects, even relayed intact.
pub fn channel_proof(binding_key: &[u8; 32], role: Role, own: &str, peer: &str) -> [u8; 32] {
    channel_proof_mac(binding_key, role, own, peer)
        .finalize()
        .into_bytes()
        .into()
}

fn channel_proof_mac(binding_key: &[u8; 32], role: Role, own: &str, peer: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(binding_key)
        .expect("HMAC accepts keys of any length");
    mac.update(b"p2pd/1 channel binding\0");
    mac.update(role.label());
    for fingerprint in [own, peer] {
        let normalized = fingerprint.trim().to_ascii_lowercase();
        mac.update(&(normalized.len() as u64).to_be_bytes());
        mac.update(normalized.as_bytes());
    }
    mac
}

/// Checks the peer's proof, in constant time: it must cover the certificate we received as
/// its own and the one we presented as its peer's.
pub fn verify_channel_proof(
    binding_key: &[u8; 32],
    our_role: Role,
    our_certificate: &str,
    peer_certificate: &str,
    proof: &[u8],
) -> bool {
    channel_proof_mac(
        binding_key,
        our_role.peer(),
        peer_certificate,
        our_certificate,
    )
    .verify_slice(proof)
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(sender_code: &str, receiver_code: &str) -> (SessionKeys, SessionKeys) {
        let (a, msg_a) = Pake::start(Role::Sender, &sender_code.parse().unwrap());
        let (b, msg_b) = Pake::start(Role::Receiver, &receiver_code.parse().unwrap());
        (a.finish(&msg_b).unwrap(), b.finish(&msg_a).unwrap())
    }

    fn channels() -> (SealedChannel, SealedChannel) {
        let (a, b) = pair("5-orbit-lantern", "5-orbit-lantern");
        let (tag_a, tag_b) = (a.our_confirmation(), b.our_confirmation());
        (a.confirm(&tag_b).unwrap(), b.confirm(&tag_a).unwrap())
    }

    #[test]
    fn device_sessions_confirm_only_with_the_pair_secret_and_each_has_its_own_resume_secret() {
        let pair = [3u8; 32];
        let open = |nonce_s: &[u8], secret_r: &[u8; 32]| {
            let s = SessionKeys::between_devices(&pair, Role::Sender, (nonce_s, b"r"), &[5; 32]);
            let r =
                SessionKeys::between_devices(secret_r, Role::Receiver, (nonce_s, b"r"), &[5; 32]);
            let (tag_s, tag_r) = (s.our_confirmation(), r.our_confirmation());
            (s.confirm(&tag_r), r.confirm(&tag_s))
        };
        let (Ok(mut s1), Ok(mut r1)) = open(b"s1", &pair) else {
            panic!("the same pair secret must confirm")
        };
        assert_eq!(r1.open(&s1.seal(b"hi")).unwrap(), b"hi");
        assert_eq!(*s1.resume_secret(), *r1.resume_secret());
        assert_eq!(*s1.binding_key(), *r1.binding_key());
        let (Ok(s2), Ok(_)) = open(b"s2", &pair) else {
            panic!("the same pair secret must confirm")
        };
        assert_ne!(
            *s1.resume_secret(),
            *s2.resume_secret(),
            "a job's own resume secret"
        );
        assert_ne!(
            *s1.resume_secret(),
            pair,
            "the pair secret never becomes a job's"
        );
        assert_ne!(*s1.binding_key(), *s2.binding_key());
        let (s, r) = open(b"s1", &[4; 32]);
        assert!(
            s.is_err() && r.is_err(),
            "a wrong pair secret never confirms"
        );
        // A sender's session looped back into its own listener: another receiver key.
        let s = SessionKeys::between_devices(&pair, Role::Sender, (b"s", b"r"), &[5; 32]);
        let r = SessionKeys::between_devices(&pair, Role::Receiver, (b"s", b"r"), &[6; 32]);
        let (tag_s, tag_r) = (s.our_confirmation(), r.our_confirmation());
        assert!(s.confirm(&tag_r).is_err() && r.confirm(&tag_s).is_err());
    }

    #[test]
    fn resumed_sessions_share_the_secret_but_never_a_key() {
        let (a, b) = channels();
        let secret = a.resume_secret();
        assert_eq!(*secret, *b.resume_secret());
        let resumed = |nonce_s: &[u8], nonce_r: &[u8], secret_r: &[u8; 32]| {
            let s = SessionKeys::resumed(&secret, Role::Sender, nonce_s, nonce_r);
            let r = SessionKeys::resumed(secret_r, Role::Receiver, nonce_s, nonce_r);
            let (tag_s, tag_r) = (s.our_confirmation(), r.our_confirmation());
            (s.confirm(&tag_r), r.confirm(&tag_s))
        };
        let (Ok(mut s1), Ok(mut r1)) = resumed(b"n1", b"n2", &secret) else {
            panic!("same secret must confirm")
        };
        let (Ok(mut s2), Ok(_)) = resumed(b"n3", b"n2", &secret) else {
            panic!("same secret must confirm")
        };
        assert_eq!(r1.open(&s1.seal(b"hi")).unwrap(), b"hi");
        assert_ne!(s1.seal(b"x"), s2.seal(b"x"), "fresh nonces give fresh keys");
        assert_ne!(*s1.binding_key(), *s2.binding_key());
        assert_eq!(
            *s1.resume_secret(),
            *secret,
            "the secret stays for later resumes"
        );
        let (s, r) = resumed(b"n1", b"n2", &[7; 32]);
        assert!(s.is_err() && r.is_err(), "a wrong secret never confirms");
        assert_ne!(rejoin_channel(&secret), rejoin_channel(&[7; 32]));
        assert_eq!(rejoin_channel(&secret).len(), 64);
    }

    #[test]
    fn derived_secrets_are_wiped_on_drop_and_never_formatted() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let (a, _) = channels();
        let (secret, binding) = (a.resume_secret(), a.binding_key());
        wiped_on_drop(&secret);
        wiped_on_drop(&binding);
        for printed in [format!("{secret:?}"), format!("{binding:?}")] {
            assert_eq!(printed, "Secret(redacted)");
        }
        let as_array: &[u8; 32] = &secret;
        assert_ne!(as_array, &[0; 32], "derefs to the secret's bytes");
    }

    #[test]
    fn same_code_confirms_and_seals_both_ways() {
        let (mut a, mut b) = channels();
        let blob = a.seal(b"offer");
        assert_eq!(b.open(&blob).unwrap(), b"offer");
        let blob = b.seal(b"answer");
        assert_eq!(a.open(&blob).unwrap(), b"answer");
    }

    #[test]
    fn wrong_code_fails_confirmation_on_both_sides() {
        let (a, b) = pair("5-orbit-lantern", "5-orbit-apple");
        let (tag_a, tag_b) = (a.our_confirmation(), b.our_confirmation());
        assert_eq!(a.confirm(&tag_b).err(), Some(CryptoError::WrongCode));
        assert_eq!(b.confirm(&tag_a).err(), Some(CryptoError::WrongCode));
    }

    #[test]
    fn a_side_cannot_confirm_with_its_own_tag() {
        let (a, _b) = pair("5-orbit-lantern", "5-orbit-lantern");
        let own = a.our_confirmation();
        assert_eq!(a.confirm(&own).err(), Some(CryptoError::WrongCode));
    }

    #[test]
    fn replayed_reordered_reflected_and_tampered_messages_are_rejected() {
        let (mut a, mut b) = channels();
        let first = a.seal(b"one");
        let second = a.seal(b"two");
        assert_eq!(b.open(&second), Err(CryptoError::BadSeal), "reordered");
        assert_eq!(b.open(&first).unwrap(), b"one");
        assert_eq!(b.open(&first), Err(CryptoError::BadSeal), "replayed");
        let mut tampered = second.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(b.open(&tampered), Err(CryptoError::BadSeal), "tampered");
        assert_eq!(b.open(&second).unwrap(), b"two");
        let mine = b.seal(b"three");
        assert_eq!(b.open(&mine), Err(CryptoError::BadSeal), "reflected");
        assert_eq!(a.open(&[1, 2]), Err(CryptoError::BadSeal), "short");
    }

    #[test]
    fn channel_proofs_bind_role_and_both_certificates() {
        let (a, b) = channels();
        let key = a.binding_key();
        assert_eq!(
            *key,
            *b.binding_key(),
            "both sides derive the same binding key"
        );
        let proof = channel_proof(&key, Role::Sender, "AA:01", "bb:02");
        // The receiver saw AA:01 as the sender's certificate and presented BB:02.
        assert!(verify_channel_proof(
            &key,
            Role::Receiver,
            "bb:02",
            "aa:01",
            &proof
        ));
        // A relay that terminated DTLS itself shows the receiver another certificate.
        assert!(!verify_channel_proof(
            &key,
            Role::Receiver,
            "bb:02",
            "cc:03",
            &proof
        ));
        assert!(!verify_channel_proof(
            &key,
            Role::Receiver,
            "cc:03",
            "aa:01",
            &proof
        ));
        // A reflected proof, or one under another key, fails.
        assert!(!verify_channel_proof(
            &key,
            Role::Sender,
            "aa:01",
            "bb:02",
            &proof
        ));
        assert!(!verify_channel_proof(
            &[9; 32],
            Role::Receiver,
            "bb:02",
            "aa:01",
            &proof
        ));
        assert!(!verify_channel_proof(
            &key,
            Role::Receiver,
            "bb:02",
            "aa:01",
            &proof[..31]
        ));
    }

    #[test]
    fn garbage_pake_message_is_an_error_not_a_panic() {
        let (a, _) = Pake::start(Role::Sender, &"1-orbit-lantern".parse().unwrap());
        assert!(a.finish(&[0u8; 3]).is_err());
    }
}
