//! The local protocol between `p2p` and `p2pd`: messages, the frame codec, and the client.

pub mod client;
pub mod codec;
pub mod messages;
