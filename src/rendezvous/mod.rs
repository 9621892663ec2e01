//! Pairing two daemons by a short code: the rendezvous server, its client, the codes,
//! and the PAKE that turns a code into keys. Knows nothing of WebRTC or files.

pub mod client;
pub mod code;
pub mod crypto;
pub mod ice;
pub mod limits;
pub mod messages;
pub mod server;
pub mod session;
mod words;

pub use code::{Code, CodeError};
pub use crypto::Role;
pub use session::Session;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot reach the rendezvous at {url}: check that it runs and the address is right")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the rendezvous closed the connection")]
    RendezvousClosed,
    #[error("no transfer is waiting for that code: check it, or ask the sender for a new one")]
    UnknownCode,
    #[error("the code expired before anyone used it: run p2p send again for a new code")]
    Expired,
    #[error("that code is already in use by two other parties: ask the sender for a new one")]
    Crowded,
    #[error("wrong code, or someone tried to guess it: ask the sender for a new code")]
    WrongCode,
    #[error("the rendezvous is busy: try again in a moment")]
    Busy,
    #[error("the other side went away before the transfer started")]
    PeerGone,
    #[error("a signaling message failed authentication")]
    BadSeal,
    #[error("rendezvous protocol error: {0}")]
    Protocol(String),
}
