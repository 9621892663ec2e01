//! Integration tests: real daemons, real rendezvous, real WebRTC over loopback.

mod abuse;
mod cli;
mod errors;
mod flood;
mod hostile;
mod netns;
#[path = "../netns/mod.rs"]
mod netns_harness;
mod races;
mod resume;
mod support;
mod tls;
mod transfer;
