//! p2pd: a peer-to-peer file transfer daemon.
pub mod config;
pub mod daemon;
pub mod devices;
#[cfg(test)]
mod doc_drift;
pub mod ipc;
pub mod lan;
#[cfg(test)]
mod proptests;
pub mod rendezvous;
pub mod rtc;
pub mod terminal;
pub mod transfer;
