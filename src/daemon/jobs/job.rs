//! One job's shared state: what its watchers see (`info`), its cancellation, the answers
//! it waits for, and what its transfer reports (`Observer`).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::daemon::rate::RateMeter;
use crate::ipc::messages::{ErrorKind, Failure, FileInfo, JobInfo, JobState, ResumeInfo};
use crate::terminal::escape_controls;
use crate::transfer::Observer;
use crate::transfer::wire::Manifest;

pub struct Job {
    pub info: watch::Sender<JobInfo>,
    pub cancel: CancellationToken,
    pub(super) decision: Mutex<Option<oneshot::Sender<bool>>>,
    /// A manual send job waiting for its pasted answer.
    pub(super) answer: Mutex<Option<oneshot::Sender<String>>>,
    pub(super) rate: Mutex<RateMeter>,
    /// Its other side is a nearby device (`--nearby`): only a compared string backs it.
    pub(super) nearby: std::sync::atomic::AtomicBool,
}

impl Job {
    pub(super) fn new(info: JobInfo, cancel: CancellationToken) -> Job {
        Job {
            info: watch::Sender::new(info),
            cancel,
            decision: Mutex::new(None),
            answer: Mutex::new(None),
            rate: Mutex::new(RateMeter::default()),
            nearby: Default::default(),
        }
    }

    pub fn mark_nearby(&self) {
        self.nearby.store(true, Ordering::Relaxed);
    }

    pub fn is_nearby(&self) -> bool {
        self.nearby.load(Ordering::Relaxed)
    }

    pub fn set_state(&self, state: JobState) {
        self.info.send_if_modified(|info| {
            // A final state is final: late updates must not revive a job.
            let changed = !info.state.is_final() && info.state != state;
            if changed {
                info.state = state;
                if state != JobState::WaitingToResume {
                    info.resume = None;
                }
            }
            changed
        });
    }

    /// The job lost its peer and waits to reach it again until `deadline_unix`.
    pub fn wait_to_resume(&self, reason: &str, deadline_unix: u64) {
        self.info.send_modify(|info| {
            if !info.state.is_final() {
                info.state = JobState::WaitingToResume;
                info.rate = 0;
                lock(&self.rate).restart();
                info.resume = Some(ResumeInfo {
                    reason: escape_controls(reason),
                    deadline_unix,
                });
            }
        });
    }

    pub fn fail(&self, mut failure: Failure) {
        // Messages carry names and peers' words: whatever escaped them upstream, nothing
        // that drives a terminal leaves the daemon.
        failure.message = escape_controls(&failure.message);
        self.info.send_modify(|info| {
            if !info.state.is_final() {
                info.state = if failure.kind == ErrorKind::Cancelled {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                };
                info.failure = Some(failure);
            }
        });
    }

    pub fn set_route(&self, route: Option<crate::rtc::Route>) {
        let route = route.map(|r| crate::ipc::messages::RouteInfo {
            relayed: r.relayed,
            description: r.description,
        });
        self.info.send_modify(|info| info.route = route);
    }

    /// Shows this side's session description (manual signaling).
    pub fn show_signal(&self, blob: String) {
        self.info.send_modify(|info| info.signal = Some(blob));
    }

    /// Registers a manual send job's wait for the pasted answer (before the offer is
    /// shown, so an answer is never early).
    pub fn expect_answer(&self) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        *lock(&self.answer) = Some(tx);
        rx
    }

    /// The paired device on the other side, and, for a send waiting for it to come
    /// online, when it stops waiting.
    pub fn set_device(&self, name: &str, wait_deadline_unix: Option<u64>) {
        let name = escape_controls(name);
        self.info.send_modify(|info| {
            info.device = Some(name);
            info.wait_deadline_unix = wait_deadline_unix;
        });
    }

    /// A send to a paired device met it: no more waiting.
    pub fn met_device(&self) {
        self.info.send_modify(|info| info.wait_deadline_unix = None);
    }

    /// The short authentication string both screens show (manual signaling).
    pub fn set_sas(&self, sas: String) {
        self.info.send_modify(|info| info.sas = Some(sas));
    }

    /// Registers the question a receive job waits on and returns the answer's receiver.
    pub fn ask(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        *lock(&self.decision) = Some(tx);
        rx
    }
}

impl Observer for Job {
    fn offered(&self, offer: &Manifest) {
        let files = &offer.files;
        self.info.send_modify(|info| {
            info.skipped = offer.skipped.clone();
            info.files = files
                .iter()
                .map(|f| FileInfo {
                    name: f.name.clone(),
                    size: f.size,
                    verified: false,
                    saved_as: None,
                })
                .collect();
            info.bytes_total = files.iter().map(|f| f.size).sum();
        });
    }

    fn progress(&self, bytes_done: u64) {
        let now = Instant::now();
        let (rate, active) = {
            let mut meter = lock(&self.rate);
            let rate = meter.observe(now, bytes_done);
            (rate, meter.active(now, bytes_done))
        };
        self.info.send_modify(|info| {
            info.bytes_done = bytes_done;
            info.rate = rate.unwrap_or(0);
            if let Some((took, moved)) = active {
                info.active_ms = took.as_millis() as u64;
                info.active_bytes = moved;
            }
        });
    }

    fn folder_saved(&self, path: &Path) {
        self.info
            .send_modify(|info| info.saved_folders.push(path.to_owned()));
    }

    fn message_offered(&self) {
        self.info.send_modify(|info| info.message_offered = true);
    }

    fn text_received(&self, text: &str) {
        let text = text.to_owned();
        self.info.send_modify(|info| info.text = Some(text));
    }

    fn file_verified(&self, index: usize, saved: Option<&Path>) {
        self.info.send_modify(|info| {
            if let Some(file) = info.files.get_mut(index) {
                file.verified = true;
                file.saved_as = saved.map(Path::to_owned);
            }
        });
    }
}
