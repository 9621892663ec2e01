//! Rendezvous messages, and the sealed-blob opener, on any bytes: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd::rendezvous::messages::{ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ClientMessage>(data);
    let _ = serde_json::from_slice::<ServerMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<p2pd::rendezvous::Code>();
    }
});
