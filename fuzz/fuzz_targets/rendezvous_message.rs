//! Rendezvous messages, and the sealed-blob opener, on any bytes: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd::rendezvous::Role;
use p2pd::rendezvous::crypto::{SealedChannel, SessionKeys};
use p2pd::rendezvous::messages::{ClientMessage, ServerMessage};

/// A confirmed pair of channels. Keys from a fixed resume secret rather than SPAKE2, so
/// each input costs a few HMACs, not a scalar multiplication; the opener is the same.
fn channels() -> (SealedChannel, SealedChannel) {
    let secret = [7u8; 32];
    let sender = SessionKeys::resumed(&secret, Role::Sender, b"fuzz s", b"fuzz r");
    let receiver = SessionKeys::resumed(&secret, Role::Receiver, b"fuzz s", b"fuzz r");
    let (tag_s, tag_r) = (sender.our_confirmation(), receiver.our_confirmation());
    match (sender.confirm(&tag_r), receiver.confirm(&tag_s)) {
        (Ok(s), Ok(r)) => (s, r),
        _ => unreachable!("one secret always confirms"),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ClientMessage>(data);
    let _ = serde_json::from_slice::<ServerMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<p2pd::rendezvous::Code>();
    }
    // Any bytes as a sealed blob: rejected (a forgery this short is out of reach), never
    // a panic; and any bytes as a plaintext survive sealing and opening unchanged.
    let (mut sender, mut receiver) = channels();
    assert!(receiver.open(data).is_err());
    let blob = sender.seal(data);
    assert_eq!(receiver.open(&blob).ok().as_deref(), Some(data));
    assert!(receiver.open(&blob).is_err(), "a replay opens");
});
