//! Nearby devices on the LAN: what a daemon announces with mDNS/DNS-SD and what it makes
//! of others' announcements (`announce`, pure), the browsing itself (`discovery`), and
//! the short exchange that carries a nearby send's offer and answer over a LAN TCP
//! connection (`signal`). Knows nothing of files or WebRTC.

pub mod announce;
pub mod discovery;
pub mod relay;
pub mod signal;

pub use announce::{Nearby, NearbyTable};
pub use discovery::Discovery;
