//! WebRTC: a tuned peer connection, negotiated over the sealed signaling session, with one
//! ordered reliable data channel exposed as a [`crate::transfer::link::Link`].

pub mod channel;
pub mod peer;
pub mod runtime;
pub mod sctp;

pub use peer::signal::refuse;
pub use peer::{Connection, IceServer, Route, RtcSettings, connect_answerer, connect_offerer};

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("cannot set up WebRTC")]
    Setup(#[source] webrtc::error::Error),
    #[error(
        "no network route to the other side was found: if either side is behind a strict NAT or firewall, configure a TURN server"
    )]
    NoRoute,
    #[error(
        "the encrypted handshake with the other side failed: its DTLS certificate is not the one it announced, or it broke the handshake off (what an interception looks like), so nothing was sent"
    )]
    Handshake,
    #[error(
        "a network path to the other side was found, but the encrypted handshake over it did not complete, twice, so nothing was sent: the path may be losing most of its packets (try again, or from another network), or someone on it presented a certificate other than the one announced (what an interception looks like)"
    )]
    HandshakeStalled,
    #[error("the data channel closed before the transfer started")]
    ChannelClosed,
    #[error("the peer sent a malformed signaling message")]
    BadSignal,
    #[error(transparent)]
    TooManyCandidates(#[from] peer::candidates::TooManyCandidates),
    #[error("signaling failed")]
    Signaling(#[source] crate::rendezvous::SignalError),
    #[error(
        "ICE gathering did not finish within 15 s, so there is no complete description to hand over: a STUN or TURN server did not answer ({0}); check it, or remove it from the daemon's [[ice_servers]]"
    )]
    Gathering(String),
    #[error("cancelled")]
    Cancelled,
    /// The other side will not connect; its words, escaped.
    #[error("the other side refused: {0}")]
    Refused(String),
}
