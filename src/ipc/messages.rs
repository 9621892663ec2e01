//! Messages between `p2p` and `p2pd`. Serde types at the boundary only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape; both sides must agree.
pub const PROTOCOL_VERSION: u32 = 3;

pub type JobId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    Hello { version: u32 },
    Request(Request),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start sending; the reply is `Created` with the code, then updates if `follow`.
    Send {
        paths: Vec<PathBuf>,
        follow: bool,
        path: PathPolicy,
    },
    /// Start receiving; `accept` skips the question. Updates follow if `follow`.
    Receive {
        code: String,
        download_dir: Option<PathBuf>,
        accept: bool,
        follow: bool,
        path: PathPolicy,
    },
    List,
    Watch {
        job: JobId,
    },
    Cancel {
        job: JobId,
    },
    /// Answer a receive job's question: take the offered files or not.
    Decide {
        job: JobId,
        accept: bool,
    },
}

impl Request {
    /// What kind of request this is, safe to log.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Send { .. } => "send",
            Request::Receive { .. } => "receive",
            Request::List => "list",
            Request::Watch { .. } => "watch",
            Request::Cancel { .. } => "cancel",
            Request::Decide { .. } => "decide",
        }
    }
}

/// Which network paths a transfer may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathPolicy {
    /// The daemon's configured default (any path, unless the config says otherwise).
    #[default]
    Default,
    /// Only through a TURN relay (`--force-relay`).
    ForceRelay,
    /// Fail rather than relay (`--require-direct`).
    RequireDirect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Hello { version: u32 },
    Created(JobInfo),
    Update(JobInfo),
    Jobs(Vec<JobInfo>),
    Done,
    Error { kind: ErrorKind, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Send,
    Receive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Talking to the rendezvous.
    Connecting,
    /// Sender: the code is out, waiting for the receiver.
    WaitingForPeer,
    /// Key exchange and WebRTC negotiation.
    Negotiating,
    /// Receiver: the offer is in, waiting for a yes or no.
    AwaitingApproval,
    Transferring,
    /// Interrupted: trying to reach the other side again to continue (see `resume`).
    WaitingToResume,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    WrongCode,
    UnknownCode,
    Expired,
    PeerGone,
    Declined,
    VerificationFailed,
    NoRoute,
    Cancelled,
    Rendezvous,
    Io,
    Protocol,
    ShuttingDown,
    Version,
    PermissionDenied,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub verified: bool,
    pub saved_as: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

/// Everything known about one job; the daemon streams a fresh copy on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub direction: Direction,
    pub state: JobState,
    /// Sender only: the code to give the receiver.
    pub code: Option<String>,
    pub files: Vec<FileInfo>,
    /// Bytes the receiver has written (both directions report the same figure).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Average payload rate since the first byte, bytes per second.
    pub rate: u64,
    pub failure: Option<Failure>,
    /// The network path, once connected.
    pub route: Option<RouteInfo>,
    /// Sender-side paths left out of the offer (symlinks, special files).
    pub skipped: Vec<String>,
    /// Receiving side: top-level folders in place (their files have no `saved_as`).
    pub saved_folders: Vec<PathBuf>,
    /// While waiting to resume: why, and until when.
    pub resume: Option<ResumeInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeInfo {
    pub reason: String,
    /// Seconds since the Unix epoch after which the job gives up.
    pub deadline_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub relayed: bool,
    /// For people, like "direct (host ↔ srflx)".
    pub description: String,
}
