//! What `p2p send -` reads from stdin, kept on disk in the state directory until its job
//! is over (issue #29): not in the runtime directory, a tmpfs of a tenth of RAM under
//! systemd, where a large pipe failed with ENOSPC. The daemon owns each spool: made for
//! one control connection, removed if that connection ends before a send names it (the
//! CLI was killed while reading stdin), or once the send it carries is over; a spool
//! whose job is gone is removed at the next start.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::jobs::{Job, Jobs};
use crate::ipc::messages::JobId;

/// The spools' folder inside the state directory (never a job's folder: `record.rs`).
pub const SPOOL_DIR: &str = "spool";
/// Inside a spool: the number of the job that sends it.
const OWNER_FILE: &str = ".job";

fn root(state_dir: &Path) -> PathBuf {
    state_dir.join(SPOOL_DIR)
}

/// The spools made on one control connection and not yet named by a send: removed when
/// the connection ends.
pub struct Pending {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Pending {
    pub fn new(state_dir: &Path) -> Pending {
        Pending {
            root: root(state_dir),
            made: Vec::new(),
        }
    }

    /// A new private folder for one spool.
    pub fn make(&mut self) -> io::Result<PathBuf> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        let dir = self.root.join(crate::daemon::record::random_hex(8));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        self.made.push(dir.clone());
        Ok(dir)
    }

    /// The spool a send of `paths` carries: one file directly in a folder made on this
    /// connection. It is this connection's no more.
    pub fn take(&mut self, paths: &[PathBuf]) -> Option<PathBuf> {
        let [path] = paths else { return None };
        let parent = path.parent()?;
        let at = self.made.iter().position(|d| d == parent)?;
        Some(self.made.swap_remove(at))
    }
}

impl Pending {
    /// Gives back a spool whose send was refused: it goes with the connection.
    pub fn adopt(&mut self, dir: PathBuf) {
        self.made.push(dir);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        for dir in self.made.drain(..) {
            remove(&dir);
        }
    }
}

fn remove(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != io::ErrorKind::NotFound
    {
        warn!(%error, dir = %dir.display(), "cannot remove a stdin spool");
    }
}

/// `dir` now belongs to `job`: removed once the job is over.
pub fn own(job: Arc<Job>, dir: PathBuf) {
    let id = job.info.borrow().id;
    if let Err(error) = std::fs::write(dir.join(OWNER_FILE), id.to_string()) {
        warn!(%error, "cannot mark a stdin spool with its job");
    }
    tokio::spawn(remove_when_over(job, dir));
}

async fn remove_when_over(job: Arc<Job>, dir: PathBuf) {
    let mut info = job.info.subscribe();
    // A daemon stopping drops this task: a durable send keeps its spool for the next start.
    let _ = info.wait_for(|i| i.state.is_final()).await;
    let _ = tokio::task::spawn_blocking(move || remove(&dir)).await;
}

/// At start: spools of a restored send are watched again; every other one is removed.
pub fn sweep(jobs: &Jobs, state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(root(state_dir)) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        match owner(&dir).and_then(|id| jobs.get(id)) {
            Some(job) if !job.info.borrow().state.is_final() => {
                tokio::spawn(remove_when_over(job, dir));
            }
            _ => remove(&dir),
        }
    }
}

fn owner(dir: &Path) -> Option<JobId> {
    std::fs::read_to_string(dir.join(OWNER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_not_named_by_a_send_goes_with_its_connection() {
        let state = tempfile::tempdir().unwrap();
        let mut pending = Pending::new(state.path());
        let (kept, dropped) = (pending.make().unwrap(), pending.make().unwrap());
        std::fs::write(kept.join("data"), b"x").unwrap();
        std::fs::write(dropped.join("data"), b"x").unwrap();
        assert_eq!(pending.take(&[PathBuf::from("/elsewhere/data")]), None);
        assert_eq!(pending.take(&[kept.join("data"), kept.join("data")]), None);
        assert_eq!(pending.take(&[kept.join("data")]), Some(kept.clone()));
        drop(pending);
        assert!(kept.exists(), "named by a send: its job's now");
        assert!(!dropped.exists(), "the CLI left before sending it");
        assert_eq!(owner(&kept), None);
        std::fs::write(kept.join(OWNER_FILE), "42\n").unwrap();
        assert_eq!(owner(&kept), Some(42));
    }
}
