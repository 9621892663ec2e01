//! p2pd: a peer-to-peer file transfer daemon.
pub mod rendezvous;
pub mod rtc;
pub mod transfer;
