//! Pairing two daemons by a short code: the rendezvous server, its client, the codes,
//! and the PAKE that turns a code into keys. Knows nothing of WebRTC or files.

pub mod admission;
pub mod bus;
pub mod client;
pub mod code;
mod conn;
pub mod crypto;
pub mod ice;
pub mod instances;
pub mod limits;
pub mod messages;
pub mod page;
pub mod pair;
pub mod server;
pub mod session;
pub mod slots;
pub mod store;
pub mod tls;
#[cfg(test)]
mod vectors;
pub mod watch;
mod words;

pub use code::{Code, CodeError};
pub use crypto::Role;
pub use session::Session;
pub use tls::Endpoint;

/// What to do next after the code failed, which depends on who holds it: the sender makes
/// codes, the receiver can only ask for one.
fn new_code_hint(role: &Role) -> &'static str {
    match role {
        Role::Sender => "run p2p send again for a new code",
        Role::Receiver => "ask the sender for a new code",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot reach the rendezvous at {url}: check that it runs and the address is right")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error(
        "the rendezvous at {url} presented a certificate this machine does not trust: if it uses a private CA, pass --rendezvous-ca FILE (rendezvous_ca in the config)"
    )]
    Untrusted {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error(
        "the rendezvous at {url} presented a certificate for another name: use the host name its certificate was issued for in the address"
    )]
    WrongName {
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
    #[error("wrong code, or someone tried to guess it: {}", new_code_hint(.role))]
    WrongCode { role: Role },
    /// Someone claimed the nameplate and never completed the key exchange; the rendezvous
    /// burned it, so the code is useless to everyone now.
    #[error(
        "someone took the code without completing the key exchange (a guess, or an attempt to block the transfer): {}",
        new_code_hint(.role)
    )]
    Abandoned { role: Role },
    #[error("the rendezvous is busy: try again in a moment")]
    Busy,
    #[error("the other side went away before the transfer started")]
    PeerGone,
    /// Distinct from [`SignalError::PeerGone`]: the peer may be fine, but a message that
    /// claims to be from it was not.
    #[error(
        "a signaling message failed authentication, so it was altered on the way or did not come from the other side (possible tampering at the rendezvous or on the network): try again"
    )]
    BadSeal,
    #[error(transparent)]
    Tls(tls::TlsError),
    #[error("rendezvous protocol error: {0}")]
    Protocol(String),
}
