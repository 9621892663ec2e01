//! Integration tests: real daemons, real rendezvous, real WebRTC over loopback.

mod abuse;
mod activation;
mod browser;
mod candidates;
mod capacity;
mod cli;
mod cluster;
mod ctrl_c;
mod devices;
mod errors;
mod escaping;
mod flood;
mod hostile;
mod instances;
mod lan_code;
mod lockout;
mod manual;
mod many_files;
mod nearby;
mod netns;
#[path = "../netns/mod.rs"]
mod netns_harness;
mod page;
mod paired;
mod pion;
mod qr;
mod races;
mod resume;
mod state_dir;
mod stdin;
mod stdout;
mod support;
mod takeover;
mod terminal;
mod tls;
mod transfer;
