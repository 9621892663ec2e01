//! What survives a daemon restart besides durable jobs: the next job number (so numbers
//! are never reused) and the summaries of recently finished jobs (so `p2p status` still
//! lists them). One small JSON file beside the job records, replaced atomically. Blocking
//! I/O; the pure part (keeping the newest, clearing) is unit-tested.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ipc::messages::{JobId, JobSummary};

/// Finished jobs kept, newest first; older ones are forgotten.
pub const FINISHED_JOBS_KEPT: usize = 100;
const HISTORY_FILE: &str = "history.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The number the next job gets; above every number given so far.
    pub next_id: JobId,
    /// Finished jobs, oldest first, at most [`FINISHED_JOBS_KEPT`].
    pub finished: Vec<JobSummary>,
}

impl History {
    /// Adds a finished job (replacing an entry with its number), keeping the newest.
    pub fn record(&mut self, mut job: JobSummary) {
        // A manual job's description is of no use once it ended.
        job.signal = None;
        self.finished.retain(|j| j.id != job.id);
        self.next_id = self.next_id.max(job.id + 1);
        self.finished.push(job);
        let excess = self.finished.len().saturating_sub(FINISHED_JOBS_KEPT);
        self.finished.drain(..excess);
    }

    /// Forgets every finished job; returns how many.
    pub fn clear(&mut self) -> usize {
        std::mem::take(&mut self.finished).len()
    }
}

/// The history file of a state directory.
#[derive(Debug, Clone)]
pub struct HistoryFile {
    path: PathBuf,
}

impl HistoryFile {
    pub fn in_dir(state_dir: &Path) -> HistoryFile {
        HistoryFile {
            path: state_dir.join(HISTORY_FILE),
        }
    }

    /// The saved history; an empty one if there is none or it cannot be read (said once in
    /// the log: a lost history costs old listings, never a job).
    pub fn load(&self) -> History {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                warn!(%error, path = %self.path.display(), "ignoring an unreadable job history");
                History::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => History::default(),
            Err(error) => {
                warn!(%error, path = %self.path.display(), "cannot read the job history");
                History::default()
            }
        }
    }

    /// Writes it durably: a private temporary file, flushed, renamed over the old one.
    pub fn save(&self, history: &History) -> io::Result<()> {
        let bytes = serde_json::to_vec(history).map_err(io::Error::other)?;
        super::record::write_private(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::messages::{Direction, JobState};

    fn job(id: JobId) -> JobSummary {
        JobSummary {
            id,
            direction: Direction::Send,
            state: JobState::Completed,
            code: None,
            files: 1,
            files_verified: 1,
            skipped: 0,
            bytes_done: 1,
            bytes_total: 1,
            rate: 0,
            failure: None,
            route: None,
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
        }
    }

    #[test]
    fn numbers_only_grow_and_only_the_newest_are_kept() {
        let mut history = History::default();
        for id in 1..=(FINISHED_JOBS_KEPT as JobId + 5) {
            history.record(job(id));
        }
        assert_eq!(history.finished.len(), FINISHED_JOBS_KEPT);
        assert_eq!(history.finished[0].id, 6);
        assert_eq!(history.next_id, FINISHED_JOBS_KEPT as JobId + 6);
        history.record(job(3));
        assert_eq!(history.next_id, FINISHED_JOBS_KEPT as JobId + 6);
        assert_eq!(history.clear(), FINISHED_JOBS_KEPT);
        assert!(history.finished.is_empty());
        assert_eq!(
            history.next_id,
            FINISHED_JOBS_KEPT as JobId + 6,
            "clearing keeps numbering"
        );
    }

    #[test]
    fn it_round_trips_privately_and_a_damaged_file_reads_as_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = HistoryFile::in_dir(&dir.path().join("state"));
        assert_eq!(file.load(), History::default());
        let mut history = History::default();
        history.record(job(7));
        file.save(&history).unwrap();
        assert_eq!(file.load(), history);
        let mode = std::fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&file.path, b"{not json").unwrap();
        assert_eq!(file.load(), History::default());
    }
}
