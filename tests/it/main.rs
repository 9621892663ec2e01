//! Integration tests: real daemons, real rendezvous, real WebRTC over loopback.

mod abuse;
mod cli;
mod errors;
mod support;
mod transfer;
