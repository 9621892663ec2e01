//! The test vectors docs/PROTOCOL.md publishes for the PAKE, the key schedule, the sealing
//! and the channel proof. The expected values were computed independently, with
//! python-spake2 0.9 (the implementation the `spake2` crate follows) and Python's hashlib,
//! hmac and `cryptography` (`tests/vectors/vectors.py`), so these tests check the
//! Rust side against a second implementation, not against itself.

use super::Code;
use super::crypto::{Pake, Role, channel_proof, rejoin_channel};

/// An RNG that yields one byte forever: SPAKE2's scalar is then 64 such bytes, read
/// little-endian, modulo the group order.
struct Constant(u8);

impl rand::RngCore for Constant {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        dest.fill(self.0);
        Ok(())
    }
}

impl rand::CryptoRng for Constant {}

const OFFERER: &str = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";
const ANSWERER: &str = "10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe";

#[test]
fn the_published_vectors_hold() {
    let code: Code = "7-orbit-lantern".parse().unwrap();
    let (sender, msg_a) = Pake::start_with_rng(Role::Sender, &code, Constant(1));
    let (receiver, msg_b) = Pake::start_with_rng(Role::Receiver, &code, Constant(2));
    assert_eq!(
        hex::encode(&msg_a),
        "4100ee15dac0c92e7639013cc474244c465960ecbc9d4ea463c60638e77649778e"
    );
    assert_eq!(
        hex::encode(&msg_b),
        "4221bf0608bd44ec68a13160f021ca215949fe90edbb616cef1e8b5e378ed050c0"
    );
    let (sender, receiver) = (
        sender.finish(&msg_b).unwrap(),
        receiver.finish(&msg_a).unwrap(),
    );
    assert_eq!(
        hex::encode(sender.our_confirmation()),
        "8fe7cda89bf6a8481ff7dff1f92d3a57b669d782caf9313e35f035860347ab81"
    );
    assert_eq!(
        hex::encode(receiver.our_confirmation()),
        "7b68644df6a9564a48fdff306ab3618e975cfb52a182813ba49409bda6eb2779"
    );
    let receiver_tag = receiver.our_confirmation();
    let mut sealed = sender.confirm(&receiver_tag).unwrap();
    assert_eq!(
        hex::encode(sealed.binding_key().as_slice()),
        "25319140a30af99d38384d307c52a4478542542bf299b62beed17a19ae807750"
    );
    assert_eq!(
        hex::encode(sealed.resume_secret().as_slice()),
        "1493aaef8aeaa26c3808ba37d32533479ad50c3d9d19f5c4a1e928ef51bc77ca"
    );
    let offer = br#"{"type":"offer","sdp":"v=0","attempt":0}"#;
    assert_eq!(
        hex::encode(sealed.seal(offer)),
        "00000000000000000c053adabbcc98d1ce82e0c7691faf9fc9a8774ef4894144800210848583abf4746b4863bfbae305b674689db6993dcc24af6314c4790451"
    );
    assert_eq!(
        hex::encode(sealed.seal(offer)),
        "000000000000000145b093e9e506cb10bd5c3089bebf40de1cb33d85bcd49baf3a2a6ab4712dc9c9e43ab53708fdde86bb8f4c281f8dd1c1846a9fce907fc3f6"
    );
    assert_eq!(
        hex::encode(channel_proof(
            &sealed.binding_key(),
            Role::Sender,
            &OFFERER.to_uppercase(),
            ANSWERER
        )),
        "e038d7f7a6468b59881d574538c8f69fb0612a4969369d5f65b37e5fadd86f33"
    );
    assert_eq!(
        rejoin_channel(&sealed.resume_secret()),
        "fd702e3c932cc9f1c732d14865d55046c8be7c653003f16ea53bb9a32240f9c1"
    );
}
