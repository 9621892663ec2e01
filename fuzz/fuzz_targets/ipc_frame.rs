//! Control-socket frames from a local client: any bytes, no panic, no allocation past the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd::ipc::codec;
use p2pd::ipc::messages::{ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let header: [u8; 4] = data[..4].try_into().unwrap();
        if let Ok(len) = codec::body_len(header) {
            assert!(len <= codec::MAX_FRAME_BYTES);
        }
    }
    let _ = codec::decode::<ClientFrame>(data);
    let _ = codec::decode::<ServerFrame>(data);
});
