//! Data-channel control messages from a peer: any bytes, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd::transfer::wire::Control;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(message) = Control::decode(text) {
            // What decodes must encode back to something that decodes the same.
            assert_eq!(Control::decode(&message.encode()).ok(), Some(message));
        }
    }
});
