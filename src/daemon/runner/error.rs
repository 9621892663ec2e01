//! How a job fails: its error, the failure the user is told (kind and one line), and
//! whether it is worth resuming.

use super::*;

pub(in crate::daemon) enum JobError {
    Signal(SignalError),
    Rtc(RtcError),
    Transfer(TransferError),
    /// `--require-direct`, and the only path was relayed.
    RelayForbidden,
    /// `--force-relay`, and neither the config nor the rendezvous gave a TURN server.
    NoRelay,
    /// `--manual`: no answer was pasted in time.
    NoAnswer,
    /// `--manual`: the sender's person did not confirm the authentication string.
    NotConfirmed,
    /// `--to NAME`: the paired device was not met, or did not prove itself.
    Meet(MeetError),
    /// `--nearby NAME`: the nearby daemon did not answer the offer.
    Nearby(crate::daemon::nearby::NearbyError),
    /// A code neither this daemon's rendezvous nor any daemon on the LAN knows.
    CodeNowhere {
        rendezvous: String,
    },
    Cancelled,
}

impl From<SignalError> for JobError {
    fn from(e: SignalError) -> Self {
        JobError::Signal(e)
    }
}
impl From<RtcError> for JobError {
    fn from(e: RtcError) -> Self {
        match e {
            RtcError::Cancelled => JobError::Cancelled,
            other => JobError::Rtc(other),
        }
    }
}
impl From<TransferError> for JobError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Cancelled => JobError::Cancelled,
            other => JobError::Transfer(other),
        }
    }
}

impl JobError {
    pub(super) fn failure(&self) -> Failure {
        let (kind, message) = match self {
            JobError::Signal(e) => return signal_failure(e),
            JobError::Rtc(e) => (
                match e {
                    RtcError::NoRoute => ErrorKind::NoRoute,
                    RtcError::Handshake => ErrorKind::Protocol,
                    RtcError::HandshakeStalled => ErrorKind::Protocol,
                    RtcError::TooManyCandidates(_) => ErrorKind::Protocol,
                    RtcError::Refused(_) => ErrorKind::Declined,
                    RtcError::Signaling(s) => return signal_failure(s),
                    _ => ErrorKind::PeerGone,
                },
                error_line(e),
            ),
            JobError::Transfer(e) => (
                match e {
                    TransferError::Declined | TransferError::Rejected(_) => ErrorKind::Declined,
                    TransferError::PeerCancelled(_) | TransferError::PeerGone => {
                        ErrorKind::PeerGone
                    }
                    TransferError::VerificationFailed(_) => ErrorKind::VerificationFailed,
                    TransferError::ReceiverFailed { mismatch: true, .. } => {
                        ErrorKind::VerificationFailed
                    }
                    TransferError::Protocol(_)
                    | TransferError::BadOffer(_)
                    | TransferError::Unauthenticated
                    | TransferError::SasBroken => ErrorKind::Protocol,
                    _ => ErrorKind::Io,
                },
                error_line(e),
            ),
            JobError::CodeNowhere { rendezvous } => (
                ErrorKind::UnknownCode,
                format!(
                    "no transfer is waiting for that code at the rendezvous {} nor on this LAN: check it, or ask the sender for a new one; if it is right, the sender uses another rendezvous, and both sides must use one (rendezvous = \"wss://…\" in both daemons' config, or p2pd rendezvous on a host both reach)",
                    escape_controls(rendezvous)
                ),
            ),
            JobError::Cancelled => (
                ErrorKind::Cancelled,
                "cancelled on this side (p2p cancel or Ctrl-C)".to_owned(),
            ),
            JobError::NoRelay => (
                ErrorKind::NoRoute,
                "--force-relay needs a TURN server: neither the daemon's config nor the rendezvous provides one".to_owned(),
            ),
            JobError::NoAnswer => (
                ErrorKind::Expired,
                format!(
                    "no answer was pasted within {} minutes: run p2p send --manual again",
                    crate::daemon::manual::ANSWER_WAIT.as_secs() / 60
                ),
            ),
            JobError::Meet(MeetError::Signal(e)) => return signal_failure(e),
            JobError::Meet(e) => (
                match e {
                    MeetError::Offline(..) => ErrorKind::PeerGone,
                    MeetError::Unpaired(_) => ErrorKind::NotFound,
                    MeetError::Refused(_) => ErrorKind::Declined,
                    _ => ErrorKind::Protocol,
                },
                error_line(e),
            ),
            JobError::Nearby(e) => (
                match e {
                    crate::daemon::nearby::NearbyError::Refused(_) => ErrorKind::Declined,
                    _ => ErrorKind::PeerGone,
                },
                error_line(e),
            ),
            JobError::NotConfirmed => (
                ErrorKind::Declined,
                "nothing was sent: the authentication strings were not confirmed to be the same (if they differ, someone is in between)".to_owned(),
            ),
            JobError::RelayForbidden => (
                ErrorKind::NoRoute,
                "the only path found goes through a relay, and --require-direct forbids it: retry without it, or from networks with a direct path".to_owned(),
            ),
        };
        Failure { kind, message }
    }
}

impl JobError {
    /// Why a durable job is waiting to resume: a cause only, since the daemon retries by
    /// itself and the user has nothing to do (an error's own advice, "run the transfer
    /// again", would say otherwise).
    pub(super) fn interruption(&self) -> String {
        match self {
            JobError::Signal(_) => "the rendezvous cannot be reached",
            JobError::Rtc(RtcError::NoRoute) => "no network path to the other side",
            _ => "the connection to the other side was lost",
        }
        .to_owned()
    }

    /// Lost connections and an unreachable rendezvous are worth another try; anything the
    /// peer or the data said is final.
    pub(super) fn resumable(&self) -> bool {
        match self {
            JobError::Signal(_) => true,
            JobError::Rtc(e) => !matches!(e, RtcError::Cancelled),
            JobError::Transfer(e) => receiver::resumable(e),
            JobError::RelayForbidden
            | JobError::NoRelay
            | JobError::NoAnswer
            | JobError::NotConfirmed
            | JobError::Meet(_)
            | JobError::Nearby(_)
            | JobError::CodeNowhere { .. }
            | JobError::Cancelled => false,
        }
    }
}
