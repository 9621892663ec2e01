//! The job table: creating send and receive jobs, their shared state, and what watchers see.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::history::{FINISHED_JOBS_KEPT, History, HistoryFile};
use super::record::RecordStore;
use super::runner;
use crate::config::DaemonConfig;
use crate::ipc::messages::Recipient;
use crate::ipc::messages::{
    Direction, ErrorKind, Failure, FileInfo, JobId, JobInfo, JobState, JobSummary, PathPolicy,
};
use crate::rendezvous::{Code, SignalError};
use crate::terminal::{escape_controls, escape_path};

mod job;
mod sources;

pub use job::Job;
pub(super) use sources::{collect, file_infos};

/// What every job needs from the daemon.
pub struct Context {
    pub config: DaemonConfig,
    /// The rendezvous's URL and the roots its certificate is checked against.
    /// The rendezvous's instances (one for the embedded rendezvous).
    pub rendezvous_url: crate::rendezvous::instances::Instances,
    pub records: RecordStore,
    /// Fires when the daemon stops; durable jobs then stop without cancelling.
    pub shutdown: CancellationToken,
    /// Disk space promised to the offers being received.
    pub space: Arc<crate::transfer::space::SpaceLedger>,
    /// This daemon's long-term identity.
    pub identity: Arc<crate::devices::identity::Identity>,
    /// The devices paired with it.
    pub devices: Arc<Mutex<crate::devices::registry::Registry>>,
    /// Where paired devices reach it, and the turns its sends take at theirs.
    pub mailboxes: super::mailbox::Mailboxes,
    /// Its LAN announcement and what it sees of others; `None` when it takes no part.
    pub lan: Option<Arc<crate::lan::Discovery>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Jobs {
    table: Mutex<HashMap<JobId, Arc<Job>>>,
    next_id: AtomicU64,
    /// Finished jobs of earlier runs and the numbering, saved beside the job records.
    history: Arc<Mutex<History>>,
    history_file: HistoryFile,
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
    pub(super) context: Arc<Context>,
}

pub(super) fn failure(kind: ErrorKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: escape_controls(&message.into()),
    }
}

impl Jobs {
    /// The job table, numbering on from the saved history. Reads one small file.
    pub fn new(context: Context, shutdown: CancellationToken, tracker: TaskTracker) -> Jobs {
        let history_file = HistoryFile::in_dir(context.records.root());
        let history = history_file.load();
        Jobs {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(history.next_id.max(1)),
            history: Arc::new(Mutex::new(history)),
            history_file,
            tracker,
            shutdown,
            context: Arc::new(context),
        }
    }

    pub(super) fn register(
        &self,
        direction: Direction,
        state: JobState,
        code: Option<String>,
        files: Vec<FileInfo>,
    ) -> Arc<Job> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.register_as(id, direction, state, code, files)
    }

    /// Saves the history in the background: the latest state, whatever order saves run in.
    fn save_history(&self) {
        let (history, file) = (self.history.clone(), self.history_file.clone());
        tokio::task::spawn_blocking(move || {
            let history = lock(&history);
            if let Err(error) = file.save(&history) {
                tracing::warn!(%error, "cannot save the job history");
            }
        });
    }

    fn register_as(
        &self,
        id: JobId,
        direction: Direction,
        state: JobState,
        code: Option<String>,
        files: Vec<FileInfo>,
    ) -> Arc<Job> {
        self.next_id.fetch_max(id + 1, Ordering::Relaxed);
        {
            // Numbers are never reused, even after a crash with jobs running.
            let mut history = lock(&self.history);
            history.next_id = history.next_id.max(id + 1);
        }
        self.save_history();
        let bytes_total = files.iter().map(|f| f.size).sum();
        let info = JobInfo {
            id,
            direction,
            state,
            code,
            files,
            bytes_done: 0,
            bytes_total,
            rate: 0,
            failure: None,
            route: None,
            skipped: Vec::new(),
            saved_folders: Vec::new(),
            resume: None,
            destination: None,
            active_ms: 0,
            active_bytes: 0,
            text: None,
            signal: None,
            sas: None,
            device: None,
            wait_deadline_unix: None,
            message_offered: false,
        };
        // Not a child of the daemon's shutdown: stopping the daemon interrupts a durable
        // job (to resume later) rather than cancelling it; the runner decides.
        let job = Arc::new(Job::new(info, CancellationToken::new()));
        let mut table = lock(&self.table);
        table.insert(id, job.clone());
        self.forget_old(&mut table);
        self.remember_when_finished(&job);
        job
    }

    /// Once `job` ends, its summary joins the saved history. Gives up when the daemon
    /// stops first (a job interrupted by the stop resumes or is reported next run).
    fn remember_when_finished(&self, job: &Job) {
        let mut info = job.info.subscribe();
        let (history, file) = (self.history.clone(), self.history_file.clone());
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let finished = tokio::select! {
                finished = info.wait_for(|i| i.state.is_final()) => finished.map(|i| i.summary()),
                _ = shutdown.cancelled() => return,
            };
            let Ok(summary) = finished else { return };
            let _ = tokio::task::spawn_blocking(move || {
                let mut history = lock(&history);
                history.record(summary);
                if let Err(error) = file.save(&history) {
                    tracing::warn!(%error, "cannot save the job history");
                }
            })
            .await;
        });
    }

    /// Forgets every finished job, this run's and earlier runs'; returns how many.
    pub async fn clear(&self) -> usize {
        let mut cleared: std::collections::BTreeSet<JobId> = Default::default();
        lock(&self.table).retain(|id, job| {
            let finished = job.info.borrow().state.is_final();
            if finished {
                cleared.insert(*id);
            }
            !finished
        });
        let (history, file) = (self.history.clone(), self.history_file.clone());
        let earlier = tokio::task::spawn_blocking(move || {
            let mut history = lock(&history);
            let earlier: Vec<JobId> = history.finished.iter().map(|j| j.id).collect();
            history.clear();
            if let Err(error) = file.save(&history) {
                tracing::warn!(%error, "cannot save the job history");
            }
            earlier
        })
        .await
        .unwrap_or_default();
        cleared.extend(earlier);
        cleared.len()
    }

    fn forget_old(&self, table: &mut HashMap<JobId, Arc<Job>>) {
        let mut finished: Vec<JobId> = table
            .iter()
            .filter(|(_, job)| job.info.borrow().state.is_final())
            .map(|(id, _)| *id)
            .collect();
        if finished.len() > FINISHED_JOBS_KEPT {
            finished.sort_unstable();
            for id in &finished[..finished.len() - FINISHED_JOBS_KEPT] {
                table.remove(id);
            }
        }
    }

    /// The request's path policy, or the configured default; refuses a relay-only transfer
    /// when no relay is configured, before any job exists.
    pub(super) fn resolve_path(&self, requested: PathPolicy) -> Result<PathPolicy, Failure> {
        let path = match requested {
            PathPolicy::Default => self.context.config.path_policy,
            chosen => chosen,
        };
        // A remote rendezvous may hand out a relay when pairing; the embedded one never does.
        let embedded = matches!(
            self.context.config.rendezvous,
            crate::config::RendezvousMode::Embedded { .. }
        );
        if path == PathPolicy::ForceRelay && embedded && !self.context.config.rtc.has_relay() {
            return Err(failure(
                ErrorKind::BadRequest,
                "--force-relay needs a TURN server: add one under [[ice_servers]] in the daemon's config",
            ));
        }
        Ok(path)
    }

    pub(super) fn refuse_if_stopping(&self) -> Result<(), Failure> {
        if self.shutdown.is_cancelled() {
            return Err(failure(
                ErrorKind::ShuttingDown,
                "p2pd is shutting down: start it again and retry",
            ));
        }
        Ok(())
    }

    /// Opens every file, gets a code from the rendezvous, and starts the job. Nothing is
    /// created when any path is unusable.
    pub async fn start_send(
        &self,
        paths: Vec<PathBuf>,
        path: PathPolicy,
        words: Option<String>,
        text: Option<String>,
        (manual, to): (bool, Option<Recipient>),
    ) -> Result<JobInfo, Failure> {
        self.refuse_if_stopping()?;
        let path = self.resolve_path(path)?;
        if to.is_some() && (manual || words.is_some()) {
            return Err(failure(
                ErrorKind::BadRequest,
                "--to and --nearby send without a code: leave out --code and --manual",
            ));
        }
        if manual && words.is_some() {
            return Err(failure(
                ErrorKind::BadRequest,
                "--code and --manual do not go together: a manual transfer has no code",
            ));
        }
        // Checked before anything is opened or allocated.
        if let Some(words) = &words {
            Code::with_words(0, words)
                .map_err(|e| failure(ErrorKind::BadRequest, e.to_string()))?;
        }
        let target = match &to {
            Some(Recipient::Paired(name)) => Some(self.target(name)?),
            _ => None,
        };
        let nearby = match &to {
            Some(Recipient::Nearby(name)) => Some(self.nearby_target(name, path)?),
            _ => None,
        };
        let sources = collect(paths, text.as_deref()).await?;
        if let Some(target) = target {
            return self.start_send_to(target, sources, text, path).await;
        }
        if let Some(nearby) = nearby {
            return Ok(self.start_send_nearby(nearby, sources, text));
        }
        if manual {
            let job = self.start_manual_send(sources, text, path, super::manual::Via::Person);
            let info = job.info.borrow().clone();
            return Ok(info);
        }
        let mut client = self
            .context
            .rendezvous_url
            .connect()
            .await
            .map_err(|e| signal_failure(&e))?;
        let (nameplate, _) = client.allocate().await.map_err(|e| signal_failure(&e))?;
        let code = match &words {
            Some(words) => Code::with_words(nameplate, words)
                .map_err(|e| failure(ErrorKind::BadRequest, e.to_string()))?,
            None => Code::generate(nameplate),
        };
        let files = file_infos(&sources.manifest);
        let job = self.register(
            Direction::Send,
            JobState::WaitingForPeer,
            Some(code.to_string()),
            files,
        );
        job.info
            .send_modify(|info| info.skipped = sources.manifest.skipped.clone());
        let info = job.info.borrow().clone();
        let context = self.context.clone();
        self.tracker.spawn(
            runner::run_send(
                job,
                context,
                runner::SendMeeting::Code {
                    client: Box::new(client),
                    code,
                },
                (sources, text),
                path,
            )
            .instrument(tracing::info_span!("job", id = info.id, dir = "send")),
        );
        Ok(info)
    }

    pub async fn start_receive(
        &self,
        code: &str,
        dir: Option<PathBuf>,
        accept: bool,
        path: PathPolicy,
    ) -> Result<JobInfo, Failure> {
        self.refuse_if_stopping()?;
        let path = self.resolve_path(path)?;
        let code: Code = code.parse().map_err(|e: crate::rendezvous::CodeError| {
            failure(ErrorKind::BadRequest, e.to_string())
        })?;
        let dir = self.download_dir(dir)?;
        let job = self.register(Direction::Receive, JobState::Connecting, None, Vec::new());
        job.info
            .send_modify(|info| info.destination = Some(dir.clone()));
        let info = job.info.borrow().clone();
        let context = self.context.clone();
        self.tracker.spawn(
            runner::run_receive(
                job,
                context,
                runner::ReceiveMeeting::Code(code),
                (dir, self.context.config.limits),
                accept,
                path,
            )
            .instrument(tracing::info_span!("job", id = info.id, dir = "receive")),
        );
        Ok(info)
    }

    /// A job of an earlier run, under the number it had.
    pub(super) fn register_restored(
        &self,
        id: JobId,
        direction: Direction,
        state: JobState,
        files: Vec<FileInfo>,
    ) -> Arc<Job> {
        self.register_as(id, direction, state, None, files)
    }

    /// Starts every durable job left in the state directory by an earlier run.
    pub async fn restore(&self) {
        self.restore_outbox().await;
        let records = self.context.records.clone();
        let found = tokio::task::spawn_blocking(move || records.load_all())
            .await
            .unwrap_or_default();
        for record in found {
            let direction = record.direction;
            // The number it had, when the record says (records from before numbering was kept
            // have none).
            let id = record
                .job_id
                .unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
            let job = self.register_as(id, direction, JobState::WaitingToResume, None, Vec::new());
            let destination = record.dir.clone();
            job.info.send_modify(|info| info.destination = destination);
            let info = job.info.borrow().clone();
            let dir = if direction == Direction::Send {
                "send"
            } else {
                "receive"
            };
            self.tracker.spawn(
                runner::run_restored(job, self.context.clone(), record)
                    .instrument(tracing::info_span!("job", id = info.id, dir)),
            );
        }
    }

    pub fn get(&self, id: JobId) -> Option<Arc<Job>> {
        lock(&self.table).get(&id).cloned()
    }

    /// Like [`Jobs::get`], with the error a client should see for an unknown id.
    pub fn find(&self, id: JobId) -> Result<Arc<Job>, Failure> {
        self.get(id).ok_or_else(|| not_found(id))
    }

    /// Every job, without per-file lists: the reply stays small however many files.
    pub fn list(&self) -> Vec<JobSummary> {
        let mut jobs: Vec<JobSummary> = lock(&self.table)
            .values()
            .map(|j| j.info.borrow().summary())
            .collect();
        // Finished jobs of earlier runs (and this run's, already in the table).
        let listed: std::collections::HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        jobs.extend(
            lock(&self.history)
                .finished
                .iter()
                .filter(|j| !listed.contains(&j.id))
                .cloned(),
        );
        jobs.sort_by_key(|j| j.id);
        jobs
    }

    pub fn cancel(&self, id: JobId) -> Result<(), Failure> {
        let job = self.find(id)?;
        if job.info.borrow().state.is_final() {
            return Err(failure(
                ErrorKind::BadRequest,
                format!("job {id} has already finished"),
            ));
        }
        job.cancel.cancel();
        Ok(())
    }

    /// Hands a manual send job the answer pasted on its side.
    pub fn answer(&self, id: JobId, answer: String) -> Result<(), Failure> {
        let job = self.find(id)?;
        let waiting = lock(&job.answer).take();
        match waiting {
            Some(tx) => {
                let _ = tx.send(answer);
                Ok(())
            }
            None => Err(failure(
                ErrorKind::BadRequest,
                format!("job {id} is not waiting for an answer"),
            )),
        }
    }

    /// The directory a receive job saves into: the one asked for, which must exist, or
    /// the daemon's, created if missing.
    pub(super) fn download_dir(&self, dir: Option<PathBuf>) -> Result<PathBuf, Failure> {
        let dir = match dir {
            Some(dir) => dir,
            None => {
                let dir = self.context.config.download_dir.clone();
                // The default download directory may not exist yet on a fresh account.
                std::fs::create_dir_all(&dir).map_err(|e| {
                    failure(
                        ErrorKind::Io,
                        format!(
                            "cannot create download directory {}: {e}",
                            escape_path(&dir)
                        ),
                    )
                })?;
                dir
            }
        };
        if !dir.is_dir() {
            return Err(failure(
                ErrorKind::BadRequest,
                format!(
                    "download directory {} does not exist or is not a directory: create it or choose another with -o",
                    escape_path(&dir)
                ),
            ));
        }
        Ok(dir)
    }

    pub fn decide(&self, id: JobId, accept: bool) -> Result<(), Failure> {
        let job = self.find(id)?;
        let sender = lock(&job.decision).take();
        match sender {
            Some(tx) => {
                let _ = tx.send(accept);
                Ok(())
            }
            // A nearby offer shows in the inbox while its sender's person still compares.
            None if job.is_nearby() && {
                let info = job.info.borrow();
                info.direction == Direction::Receive && !info.state.is_final()
            } =>
            {
                Err(failure(
                    ErrorKind::BadRequest,
                    format!(
                        "job {id}'s sender is still comparing the string: answer once p2p inbox shows its files"
                    ),
                ))
            }
            None => Err(failure(
                ErrorKind::BadRequest,
                format!("job {id} is not waiting for a decision"),
            )),
        }
    }
}

fn not_found(id: JobId) -> Failure {
    failure(
        ErrorKind::NotFound,
        format!("no job {id}: see `p2p status` for the job list"),
    )
}

pub fn signal_failure(error: &SignalError) -> Failure {
    let kind = match error {
        SignalError::WrongCode { .. } => ErrorKind::WrongCode,
        SignalError::UnknownCode => ErrorKind::UnknownCode,
        SignalError::Expired => ErrorKind::Expired,
        SignalError::PeerGone => ErrorKind::PeerGone,
        _ => ErrorKind::Rendezvous,
    };
    failure(kind, error.to_string())
}
