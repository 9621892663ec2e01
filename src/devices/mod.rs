//! Devices: this daemon's long-term identity and the devices paired with it. The pairing
//! ceremony itself runs in `daemon::pairing`; what is pure lives here.

pub mod identity;
pub mod mailbox;
pub mod pairing;
pub mod registry;
