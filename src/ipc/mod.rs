//! The local protocol between `p2p` and `p2pd`: messages, the frame codec, what a follower is sent, and the client.

pub mod client;
pub mod codec;
pub mod delta;
pub mod messages;
