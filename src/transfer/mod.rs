//! The file transfer protocol over a [`link::Link`]: wire messages, the sending and
//! receiving state machines, the checks on names from the peer, and the receiver's
//! filesystem edge. Knows nothing of WebRTC.

pub mod beneath;
pub mod binding;
pub mod fence;
pub mod journal;
pub mod layout;
pub mod link;
pub mod names;
pub mod receiver;
pub mod sas;
pub mod sender;
pub mod source;
pub mod space;
pub mod store;
pub mod wire;

use std::path::Path;
use std::time::Duration;

use wire::Manifest;

/// How often the receiver reports bytes written.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How long the side that closes waits for its last messages to be acknowledged.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// What a transfer reports to the job that runs it. Called from the transfer's task; keep
/// implementations quick and non-blocking.
pub trait Observer: Send + Sync {
    fn offered(&self, _offer: &Manifest) {}
    /// Receiving side: a message was offered instead of files (its words come with
    /// `text_received`, once it may be shown).
    fn message_offered(&self) {}
    /// Bytes the receiver has written, over all files.
    fn progress(&self, _bytes_done: u64) {}
    /// File `index` verified; on the receiving side, `saved` is where it now lives (files
    /// inside a folder arrive with their folder: see `folder_saved`).
    fn file_verified(&self, _index: usize, _saved: Option<&Path>) {}
    /// Receiving side: a top-level folder is in place at `path`.
    fn folder_saved(&self, _path: &Path) {}
    /// Receiving side: the sender sent this message instead of files.
    fn text_received(&self, _text: &str) {}
}

/// Why a transfer ended without success. Messages are for the user: one line, what to do.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(
        "the other side could not prove it holds the code's key for this connection (possible interception): transfer refused"
    )]
    Unauthenticated,
    #[error(
        "the authentication string exchange with the other side did not check out (a nonce other than the one committed to, a message out of turn, or silence): someone may be in between, so nothing was sent"
    )]
    SasBroken,
    #[error("the transfer was declined at the receiving end")]
    Declined,
    #[error("the receiver refused the offer: {0}")]
    Rejected(String),
    #[error("the receiver could not save {name}: {reason}")]
    ReceiverFailed {
        name: String,
        reason: String,
        /// The receiver found the bytes did not match the sender's SHA-256.
        mismatch: bool,
    },
    #[error("{}", peer_cancelled_line(.0))]
    PeerCancelled(String),
    #[error("cancelled on this side (p2p cancel or Ctrl-C)")]
    Cancelled,
    #[error("the other side went away mid-transfer: run the transfer again")]
    PeerGone,
    #[error("the other side broke the protocol: {0}")]
    Protocol(String),
    #[error(
        "verification failed for {0}: the received bytes do not match the sender's SHA-256, nothing was saved under that name"
    )]
    VerificationFailed(String),
    #[error(
        "{0} changed while it was being sent: send it again once it is no longer being written"
    )]
    SourceChanged(String),
    #[error("disk full while receiving: free some space and run the transfer again")]
    DiskFull,
    #[error(
        "not enough free space: the transfer needs {} but only {} are free{}: free some space, or receive into another directory with -o DIR",
        indicatif::HumanBytes(*.needed),
        indicatif::HumanBytes(*.available),
        if *.promised > 0 {
            format!(" once the {} that transfers in progress still need is counted", indicatif::HumanBytes(*.promised))
        } else {
            String::new()
        }
    )]
    NotEnoughSpace {
        needed: u64,
        /// Free now, less what `promised` holds.
        available: u64,
        /// Promised to other transfers being received onto the same filesystem.
        promised: u64,
    },
    #[error("the offer is not acceptable")]
    BadOffer(#[from] names::NameError),
    /// `place` is a local path, already escaped: shown on this side, never sent to the peer.
    #[error("{context}{}", place.as_deref().map(|p| format!(" {p}")).unwrap_or_default())]
    Io {
        context: String,
        place: Option<String>,
        #[source]
        source: std::io::Error,
    },
}

/// What the other side's cancellation says here: its own words when they already say
/// who cancelled ("the sender cancelled"), so the line does not say it twice.
fn peer_cancelled_line(reason: &str) -> String {
    if (reason.starts_with("the sender ") || reason.starts_with("the receiver "))
        && reason.ends_with("cancelled")
    {
        format!("{reason} the transfer")
    } else {
        format!("the other side cancelled: {reason}")
    }
}

impl TransferError {
    fn io(context: impl Into<String>, source: std::io::Error) -> TransferError {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            return TransferError::DiskFull;
        }
        TransferError::Io {
            context: context.into(),
            place: None,
            source,
        }
    }

    /// Like [`TransferError::io`], about the local path `place`, which only this side sees.
    fn io_at(context: impl Into<String>, place: &Path, source: std::io::Error) -> TransferError {
        match TransferError::io(context, source) {
            TransferError::Io {
                context, source, ..
            } => TransferError::Io {
                context,
                place: Some(crate::terminal::escape_path(place)),
                source,
            },
            other => other,
        }
    }

    /// The whole cause, as the peer may be told it: no local path of this machine.
    pub fn peer_reason(&self) -> String {
        match self {
            TransferError::Io {
                context, source, ..
            } => crate::terminal::escape_controls(&format!("{context}: {source}")),
            other => crate::terminal::error_line(other),
        }
    }
}

/// The first exchange on a new channel: send our proof, and accept only a peer whose
/// first message is a proof that `verify` accepts. Anything else ends the transfer before
/// a name or a byte of a file has crossed.
pub async fn exchange_proofs(
    link: &dyn link::Link,
    ours: &[u8],
    verify: impl Fn(&[u8]) -> bool,
) -> Result<(), TransferError> {
    sender::send_control(
        link,
        &wire::Control::Hello {
            proof: hex::encode(ours),
        },
    )
    .await?;
    let proof = tokio::time::timeout(FLUSH_LIMIT * 2, link.recv())
        .await
        .map_err(|_| TransferError::Unauthenticated)?;
    match sender::control(proof) {
        Ok(wire::Control::Hello { proof }) => match hex::decode(proof) {
            Ok(bytes) if verify(&bytes) => Ok(()),
            _ => Err(TransferError::Unauthenticated),
        },
        Ok(_) | Err(TransferError::Protocol(_)) => Err(TransferError::Unauthenticated),
        Err(other) => Err(other),
    }
}

/// Tells the peer this side gives up before the transfer starts, and why.
pub async fn abandon(link: &dyn link::Link, reason: &str) {
    let _ = sender::cancel_peer(link, reason).await;
}

/// Lowercase hex, the form digests travel in.
pub fn hex_digest(digest: &[u8]) -> String {
    hex::encode(digest)
}

#[cfg(test)]
mod wording_tests {
    use super::TransferError;

    #[test]
    fn sizes_are_for_people_and_the_line_says_what_to_do() {
        let line = TransferError::NotEnoughSpace {
            needed: 50 * 1024 * 1024,
            available: 8 * 1024 * 1024,
            promised: 0,
        }
        .to_string();
        assert!(
            line.contains("needs 50.00 MiB but only 8.00 MiB are free"),
            "{line}"
        );
        assert!(line.contains("-o DIR"), "{line}");
    }

    #[test]
    fn a_cancellation_says_who_once() {
        let line = TransferError::PeerCancelled("the sender cancelled".into()).to_string();
        assert_eq!(line, "the sender cancelled the transfer");
        let line = TransferError::PeerCancelled("disk trouble".into()).to_string();
        assert_eq!(line, "the other side cancelled: disk trouble");
        assert!(!TransferError::Cancelled.to_string().ends_with("cancelled"));
    }
}
