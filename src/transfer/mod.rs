//! The file transfer protocol over a [`link::Link`]: wire messages, the sending and
//! receiving state machines, and the checks on names from the peer. Knows nothing of WebRTC.

pub mod link;
