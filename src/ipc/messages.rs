//! Messages between `p2p` and `p2pd`. Serde types at the boundary only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape; both sides must agree.
pub const PROTOCOL_VERSION: u32 = 9;

/// Which end wrote a hello. The two hellos differ by it, so a socket that echoes what it
/// reads cannot pass for the daemon (issue #23). `version` stays the first field of both,
/// so an older or newer peer can still read it and say which side to upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Speaker {
    Client,
    Daemon,
}

pub type JobId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    Hello { version: u32, from: Speaker },
    Request(Request),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start sending; the reply is `Created` with the code, then updates if `follow`.
    Send {
        paths: Vec<PathBuf>,
        follow: bool,
        path: PathPolicy,
        /// The code's words, chosen by the sender (`--code`); random when absent.
        words: Option<String>,
        /// A message to send instead of files (`--text`); `paths` is then empty.
        text: Option<String>,
        /// No rendezvous and no code (`--manual`): the job shows its offer as `signal`
        /// and waits for an `Answer`; `words` must be absent.
        manual: bool,
        /// To a paired device (`--to NAME`) or a nearby one (`--nearby NAME`), without a
        /// code; `words` and `manual` must be absent.
        to: Option<Recipient>,
    },
    /// Start receiving; `accept` skips the question. Updates follow if `follow`.
    Receive {
        code: String,
        download_dir: Option<PathBuf>,
        accept: bool,
        follow: bool,
        path: PathPolicy,
    },
    /// Receive with the sender's pasted offer instead of a code (`--manual`); the job
    /// shows its answer as `signal`.
    ReceiveManual {
        offer: String,
        download_dir: Option<PathBuf>,
        accept: bool,
        follow: bool,
        path: PathPolicy,
    },
    /// A manual send job's pasted answer.
    Answer {
        job: JobId,
        answer: String,
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
    /// Forget every finished job (this run's and earlier runs').
    Clear,
    /// This daemon's device name and identity fingerprint → `Identity`.
    Identity,
    /// The paired devices → `Devices`.
    Devices,
    /// Forget a paired device → `Done`, or `Error { NotFound }`.
    Unpair {
        name: String,
    },
    /// Pair with another device: without a code, print one (`PairCode`) and wait; with
    /// one, join. Then `PairPeer` asks this side to compare, the client answers
    /// `Confirm`, and the pairing ends with `Paired` or `Error`. The connection is the
    /// ceremony: closing it cancels.
    Pair {
        code: Option<String>,
    },
    /// The person's answer to `PairPeer`.
    Confirm {
        accept: bool,
    },
    /// The daemons seen on the LAN → `Nearby`.
    Nearby,
    /// How offers from a paired device are handled → `Devices` (that device only), or
    /// `Error { NotFound }`.
    Rule {
        name: String,
        rule: Rule,
        max_files: Option<u64>,
        max_bytes: Option<u64>,
    },
    /// A private folder in the daemon's state directory for what stdin carries →
    /// `Spool`. It is removed when this connection ends, unless a `Send` on it names the
    /// one file written there: then it goes when that send is over.
    Spool,
    /// The address of the browser page of this daemon's rendezvous → `Page`.
    Page,
}

pub use crate::devices::registry::Rule;

/// Who a send without a code goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recipient {
    /// A paired device, by the name `p2p devices` lists.
    Paired(String),
    /// A daemon on the LAN, by the name or id `p2p nearby` lists: host candidates only,
    /// and both people compare an authentication string.
    Nearby(String),
}

impl Request {
    /// What kind of request this is, safe to log.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Send { .. } => "send",
            Request::Receive { .. } => "receive",
            Request::ReceiveManual { .. } => "receive_manual",
            Request::Answer { .. } => "answer",
            Request::List => "list",
            Request::Watch { .. } => "watch",
            Request::Cancel { .. } => "cancel",
            Request::Decide { .. } => "decide",
            Request::Clear => "clear",
            Request::Identity => "identity",
            Request::Devices => "devices",
            Request::Unpair { .. } => "unpair",
            Request::Pair { .. } => "pair",
            Request::Confirm { .. } => "confirm",
            Request::Rule { .. } => "rule",
            Request::Nearby => "nearby",
            Request::Spool => "spool",
            Request::Page => "page",
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

/// What the daemon sends. A job's per-file lists never travel whole in one frame: a
/// follower gets them once, in `Files`/`Skipped` chunks, then only what changed
/// (`Verified`, `FoldersSaved`), each batch closed by an `Update` summary (see
/// [`super::delta`]). `Jobs` lists summaries only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Hello {
        version: u32,
        from: Speaker,
    },
    Created(JobSummary),
    /// The job's state now; the per-file frames before it are part of the same change.
    Update(JobSummary),
    /// Part of the offered file list: entries `first..first + files.len()`. The first part
    /// has `first == 0` and replaces any list the client held.
    Files {
        job: JobId,
        first: u64,
        files: Vec<FileInfo>,
    },
    /// Part of the sender's left-out paths, like `Files`.
    Skipped {
        job: JobId,
        first: u64,
        paths: Vec<String>,
    },
    /// Files verified since the last frames, with where each was saved.
    Verified {
        job: JobId,
        files: Vec<VerifiedFile>,
    },
    /// Receiving side: top-level folders put in place since the last frames.
    FoldersSaved {
        job: JobId,
        paths: Vec<PathBuf>,
    },
    Jobs(Vec<JobSummary>),
    /// `Clear` forgot this many finished jobs.
    Cleared {
        jobs: u64,
    },
    Identity {
        name: String,
        fingerprint: String,
    },
    Devices(Vec<DeviceInfo>),
    /// The pairing code to give the other device.
    PairCode {
        code: String,
    },
    /// The other device, to be compared with what its `p2p id` shows (name escaped).
    PairPeer {
        name: String,
        fingerprint: String,
    },
    /// Paired: kept under this name.
    Paired {
        name: String,
        fingerprint: String,
    },
    /// The daemons seen on the LAN (names escaped); `enabled` is false when this daemon
    /// does not take part (`--no-lan-discovery`, or mDNS could not start).
    Nearby {
        enabled: bool,
        devices: Vec<NearbyInfo>,
    },
    /// `Unpair` forgot the device here; `told` if the device heard of it and forgot this
    /// one too.
    Unpaired {
        told: bool,
    },
    Done,
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// Answers `Spool`: the folder to write stdin into.
    Spool {
        dir: PathBuf,
    },
    /// Answers `Page`: `http(s)://HOST:PORT/` of the rendezvous this daemon uses, and
    /// whether only this machine can reach it (a rendezvous on a loopback address).
    Page {
        url: String,
        this_machine_only: bool,
    },
}

/// A daemon on the LAN as `p2p nearby` lists it (name escaped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbyInfo {
    pub name: String,
    /// Random per start of that daemon.
    pub id: String,
    pub addresses: Vec<String>,
}

/// A paired device as `p2p devices` lists it (name escaped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub fingerprint: String,
    pub paired_unix: u64,
    pub last_seen_unix: Option<u64>,
    /// What happens to its offers, and the caps that refuse them whatever the rule.
    pub rule: Rule,
    pub max_files: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Whether `p2p send --to` can reach it (pairings made before that existed cannot:
    /// they pair again).
    pub reachable: bool,
    /// Whether it answered at its mailbox just now; `None` when it cannot be asked.
    pub online: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedFile {
    pub index: u64,
    pub saved_as: Option<PathBuf>,
}

/// A job without its per-file lists: what `p2p status` shows, and the state part of every
/// update. Its size does not grow with the number of files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub direction: Direction,
    pub state: JobState,
    pub code: Option<String>,
    pub files: u64,
    pub files_verified: u64,
    pub skipped: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate: u64,
    pub failure: Option<Failure>,
    pub route: Option<RouteInfo>,
    pub resume: Option<ResumeInfo>,
    /// Receiving side: the directory the files are saved in.
    pub destination: Option<PathBuf>,
    /// How long data has moved in the current run (milliseconds), and how many bytes: a
    /// transfer's own time, without waiting for the receiver or for a connection.
    pub active_ms: u64,
    pub active_bytes: u64,
    /// A message instead of files (`p2p send --text`): the sender's, or what arrived.
    /// Raw: whoever shows it escapes it.
    pub text: Option<String>,
    /// Manual signaling: this side's session description (base64), for the person to
    /// carry to the other side.
    pub signal: Option<String>,
    /// Manual signaling: the short authentication string both screens must show.
    pub sas: Option<String>,
    /// The paired device on the other side (escaped), for a send `--to` it or an offer
    /// from it.
    pub device: Option<String>,
    /// A send to a paired device that is offline: when it stops waiting (Unix seconds).
    pub wait_deadline_unix: Option<u64>,
    /// Receiving side: a message (not files) was offered and waits for an answer; its
    /// words arrive in `text` once it is accepted. (Absent from finished jobs kept by an
    /// older version: `history.json`.)
    #[serde(default)]
    pub message_offered: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    #[default]
    Send,
    Receive,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Talking to the rendezvous.
    #[default]
    Connecting,
    /// Sender: the code is out, waiting for the receiver.
    WaitingForPeer,
    /// Key exchange and WebRTC negotiation.
    Negotiating,
    /// Manual signaling: the sender's person is asked whether both screens show the same
    /// authentication string; nothing is offered before a yes.
    Comparing,
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

/// Everything known about one job: the daemon's snapshot, and the view a follower rebuilds
/// from the frames with [`JobInfo::apply`]. Never sent whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
    /// Receiving side: the directory the files are saved in.
    pub destination: Option<PathBuf>,
    /// How long data has moved in the current run (milliseconds), and how many bytes: a
    /// transfer's own time, without waiting for the receiver or for a connection.
    pub active_ms: u64,
    pub active_bytes: u64,
    /// A message instead of files (`p2p send --text`): the sender's, or what arrived.
    /// Raw: whoever shows it escapes it.
    pub text: Option<String>,
    /// Manual signaling: this side's session description (base64), for the person to
    /// carry to the other side.
    pub signal: Option<String>,
    /// Manual signaling: the short authentication string both screens must show.
    pub sas: Option<String>,
    /// The paired device on the other side (escaped), for a send `--to` it or an offer
    /// from it.
    pub device: Option<String>,
    /// A send to a paired device that is offline: when it stops waiting (Unix seconds).
    pub wait_deadline_unix: Option<u64>,
    /// Receiving side: a message (not files) was offered and waits for an answer; its
    /// words arrive in `text` once it is accepted.
    pub message_offered: bool,
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

impl JobInfo {
    pub fn summary(&self) -> JobSummary {
        JobSummary {
            id: self.id,
            direction: self.direction,
            state: self.state,
            code: self.code.clone(),
            files: self.files.len() as u64,
            files_verified: self.files.iter().filter(|f| f.verified).count() as u64,
            skipped: self.skipped.len() as u64,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            rate: self.rate,
            failure: self.failure.clone(),
            route: self.route.clone(),
            resume: self.resume.clone(),
            destination: self.destination.clone(),
            active_ms: self.active_ms,
            active_bytes: self.active_bytes,
            text: self.text.clone(),
            signal: self.signal.clone(),
            sas: self.sas.clone(),
            device: self.device.clone(),
            wait_deadline_unix: self.wait_deadline_unix,
            message_offered: self.message_offered,
        }
    }

    /// A view with the summary's state and no per-file lists yet.
    pub fn from_summary(summary: &JobSummary) -> JobInfo {
        let mut info = JobInfo::default();
        info.set_summary(summary);
        info
    }

    fn set_summary(&mut self, s: &JobSummary) {
        self.id = s.id;
        self.direction = s.direction;
        self.state = s.state;
        self.code = s.code.clone();
        self.bytes_done = s.bytes_done;
        self.bytes_total = s.bytes_total;
        self.rate = s.rate;
        self.failure = s.failure.clone();
        self.route = s.route.clone();
        self.resume = s.resume.clone();
        self.destination = s.destination.clone();
        self.active_ms = s.active_ms;
        self.active_bytes = s.active_bytes;
        self.text = s.text.clone();
        self.signal = s.signal.clone();
        self.sas = s.sas.clone();
        self.device = s.device.clone();
        self.wait_deadline_unix = s.wait_deadline_unix;
        self.message_offered = s.message_offered;
    }

    /// Folds one frame about this job into the view. Returns true on `Created`/`Update`:
    /// the view is then whole and worth showing. Indices outside the list are ignored (the
    /// daemon never sends them).
    pub fn apply(&mut self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::Created(s) | ServerFrame::Update(s) => {
                self.set_summary(s);
                return true;
            }
            ServerFrame::Files { first, files, .. } => {
                let first = usize::try_from(*first).unwrap_or(usize::MAX);
                self.files.truncate(first);
                self.files.extend(files.iter().cloned());
            }
            ServerFrame::Skipped { first, paths, .. } => {
                let first = usize::try_from(*first).unwrap_or(usize::MAX);
                self.skipped.truncate(first);
                self.skipped.extend(paths.iter().cloned());
            }
            ServerFrame::Verified { files, .. } => {
                for change in files {
                    let index = usize::try_from(change.index).unwrap_or(usize::MAX);
                    if let Some(file) = self.files.get_mut(index) {
                        file.verified = true;
                        file.saved_as = change.saved_as.clone();
                    }
                }
            }
            ServerFrame::FoldersSaved { paths, .. } => {
                self.saved_folders.extend(paths.iter().cloned());
            }
            _ => {}
        }
        false
    }
}
