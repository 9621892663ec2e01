//! Sends to a paired device that wait for it to come online, kept in the state directory
//! (`outbox-N.json`, readable by this user only) until the device is met, so a waiting
//! send outlives a restart of its daemon. Once met, a send becomes durable the usual way
//! (`record.rs`) when the receiver accepts.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::record::write_private;
use crate::ipc::messages::{JobId, PathPolicy};
use crate::transfer::source::{FileId, Sources};
use crate::transfer::wire::Manifest;

const PREFIX: &str = "outbox-";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiting {
    pub version: u32,
    pub job_id: JobId,
    /// The device's Ed25519 public key, hex: a renamed device is still found.
    pub device_key: String,
    pub deadline_unix: u64,
    /// How long the send was to wait, as its person asked (for saying so at the end).
    pub window_secs: u64,
    pub path: PathPolicy,
    pub manifest: Manifest,
    pub sources: Vec<PathBuf>,
    pub source_ids: Vec<FileId>,
    pub text: Option<String>,
}

impl Waiting {
    pub fn new(
        job_id: JobId,
        key: &[u8; 32],
        (deadline_unix, window): (u64, std::time::Duration),
        path: PathPolicy,
        (sources, text): (&Sources, Option<String>),
    ) -> Waiting {
        Waiting {
            version: VERSION,
            job_id,
            device_key: hex::encode(key),
            deadline_unix,
            window_secs: window.as_secs(),
            path,
            manifest: sources.manifest.clone(),
            sources: sources.paths.clone(),
            source_ids: sources.ids.clone(),
            text,
        }
    }

    pub fn key(&self) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.device_key, &mut key).ok()?;
        Some(key)
    }

    pub fn sources(&self) -> Sources {
        Sources {
            manifest: self.manifest.clone(),
            paths: self.sources.clone(),
            ids: self.source_ids.clone(),
        }
    }
}

fn file(state_dir: &Path, job_id: JobId) -> PathBuf {
    state_dir.join(format!("{PREFIX}{job_id}.json"))
}

/// Writes it durably (a private temporary file, renamed, the directory synced).
pub fn save(state_dir: &Path, waiting: &Waiting) -> io::Result<()> {
    let bytes = serde_json::to_vec(waiting).map_err(io::Error::other)?;
    write_private(&file(state_dir, waiting.job_id), &bytes)?;
    std::fs::File::open(state_dir)?.sync_all()
}

pub fn remove(state_dir: &Path, job_id: JobId) {
    if let Err(error) = std::fs::remove_file(file(state_dir, job_id))
        && error.kind() != io::ErrorKind::NotFound
    {
        warn!(%error, job_id, "cannot remove a waiting send's record");
    }
}

/// Every readable waiting send; unreadable ones are reported and left alone.
pub fn load_all(state_dir: &Path) -> Vec<Waiting> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(PREFIX) && name.ends_with(".json")) {
            continue;
        }
        match std::fs::read(entry.path()).map(|b| serde_json::from_slice::<Waiting>(&b)) {
            Ok(Ok(waiting)) if waiting.version == VERSION => found.push(waiting),
            _ => warn!(path = %entry.path().display(), "ignoring an unreadable waiting send"),
        }
    }
    found.sort_by_key(|w| w.job_id);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_waiting_send_is_kept_privately_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sources = Sources {
            manifest: Manifest::default(),
            paths: vec!["/tmp/a".into()],
            ids: Vec::new(),
        };
        let waiting = Waiting::new(
            7,
            &[3; 32],
            (99, std::time::Duration::from_secs(60)),
            PathPolicy::Default,
            (&sources, None),
        );
        save(dir.path(), &waiting).unwrap();
        let path = dir.path().join("outbox-7.json");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(dir.path().join("outbox-8.json"), "damaged").unwrap();
        std::fs::write(dir.path().join("devices.json"), "[]").unwrap();
        assert_eq!(load_all(dir.path()), std::slice::from_ref(&waiting));
        assert_eq!(waiting.key(), Some([3; 32]));
        assert_eq!(waiting.sources().paths, sources.paths);
        remove(dir.path(), 7);
        assert!(load_all(dir.path()).is_empty());
    }
}
