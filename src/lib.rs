//! p2pd: a peer-to-peer file transfer daemon.
pub mod config;
pub mod daemon;
pub mod ipc;
pub mod rendezvous;
pub mod rtc;
pub mod transfer;
