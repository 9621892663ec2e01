//! Durable job records: what a job needs to resume after the daemon restarts, one private
//! directory per job under the state directory. Blocking I/O.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use zeroize::Zeroizing;

use crate::ipc::messages::{Direction, PathPolicy};
use crate::rendezvous::crypto::Secret;
use crate::transfer::source::FileId;
use crate::transfer::wire::Manifest;

const RECORD_FILE: &str = "job.json";
const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub version: u32,
    /// Random, hex; also the name of the job's directory.
    pub id: String,
    pub direction: Direction,
    /// The resume secret from the original PAKE session (hex in the file, which is
    /// private). Wiped from memory when the record is dropped; never printed.
    pub secret: ResumeSecret,
    pub deadline_unix: u64,
    pub path: PathPolicy,
    pub manifest: Manifest,
    /// Sender: where each offered file is read from.
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    /// Sender: the device and inode of each offered file (absent in older records).
    #[serde(default)]
    pub source_ids: Vec<FileId>,
    /// Receiver: the download directory and the tag of the partial names.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub tag: Option<String>,
    /// The job's number, kept across restarts (absent in older records).
    #[serde(default)]
    pub job_id: Option<crate::ipc::messages::JobId>,
}

impl JobRecord {
    pub fn new(
        direction: Direction,
        secret: &[u8; 32],
        window: Duration,
        path: PathPolicy,
    ) -> JobRecord {
        JobRecord {
            version: RECORD_VERSION,
            id: random_hex(16),
            direction,
            secret: ResumeSecret(Secret::from_bytes(secret)),
            deadline_unix: unix_now().saturating_add(window.as_secs()),
            path,
            manifest: Manifest::default(),
            sources: Vec::new(),
            source_ids: Vec::new(),
            dir: None,
            tag: None,
            job_id: None,
        }
    }

    pub fn secret(&self) -> &ResumeSecret {
        &self.secret
    }

    pub fn expired(&self) -> bool {
        unix_now() >= self.deadline_unix
    }
}

/// A job's resume secret: the session's [`Secret`] (wiped on drop, never shown by
/// `Debug`), written as hex only into the private record file.
#[derive(Debug, Clone)]
pub struct ResumeSecret(Secret);

impl std::ops::Deref for ResumeSecret {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Serialize for ResumeSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(hex::encode(self.0.as_slice()));
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for ResumeSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.as_bytes(), bytes.as_mut())
            .map_err(|_| serde::de::Error::custom("the resume secret is not 32 bytes of hex"))?;
        Ok(ResumeSecret(Secret::from_bytes(&bytes)))
    }
}

/// Replaces `path` durably with `bytes`, readable by this user only: its directory
/// created private if missing, a temporary file flushed and renamed over the old one, the
/// directory flushed.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The state directory holding every durable job.
#[derive(Debug, Clone)]
pub struct RecordStore {
    root: PathBuf,
}

impl RecordStore {
    pub fn new(root: PathBuf) -> RecordStore {
        RecordStore { root }
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Writes the record durably: a temporary file, flushed, renamed over the old one.
    pub fn save(&self, record: &JobRecord) -> io::Result<()> {
        let dir = self.job_dir(&record.id);
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        write_private(&dir.join(RECORD_FILE), &bytes)?;
        File::open(&self.root)?.sync_all()
    }

    /// Every readable record; unreadable ones are reported and left alone.
    pub fn load_all(&self) -> Vec<JobRecord> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                warn!(%error, dir = %self.root.display(), "cannot read the job state directory");
                return Vec::new();
            }
        };
        let mut records = Vec::new();
        // Job directories only (the history file and the stdin spools live beside them).
        for entry in entries.flatten().filter(|e| {
            e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != super::spool::SPOOL_DIR
        }) {
            let path = entry.path().join(RECORD_FILE);
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<JobRecord>(&bytes) {
                    Ok(record) if record.version == RECORD_VERSION => records.push(record),
                    _ => warn!(path = %path.display(), "ignoring an unreadable job record"),
                },
                // A directory without a record is a job that never became durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
                Err(error) => warn!(%error, path = %path.display(), "cannot read a job record"),
            }
        }
        records.sort_by_key(|r| r.deadline_unix);
        records
    }

    pub fn remove(&self, id: &str) {
        if let Err(error) = std::fs::remove_dir_all(self.job_dir(id))
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(%error, id, "cannot remove a finished job's record");
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path().join("jobs"));
        assert!(store.load_all().is_empty());
        let mut record = JobRecord::new(
            Direction::Receive,
            &[9; 32],
            Duration::from_secs(60),
            PathPolicy::Default,
        );
        record.tag = Some("ab".into());
        store.save(&record).unwrap();
        store.save(&record).unwrap();
        let loaded = store.load_all();
        assert_eq!(loaded.len(), 1);
        assert_eq!(**loaded[0].secret(), [9; 32]);
        assert!(
            !format!("{:?}", loaded[0]).contains("0909"),
            "Debug shows no secret"
        );
        assert!(!loaded[0].expired());
        let mode = std::fs::metadata(store.job_dir(&record.id).join(RECORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the secret is readable by its owner only");
        std::fs::create_dir(store.root().join("stray")).unwrap();
        assert_eq!(store.load_all().len(), 1);
        assert!(!store.root().join("stray").exists());
        store.remove(&record.id);
        assert!(store.load_all().is_empty());
    }
}
