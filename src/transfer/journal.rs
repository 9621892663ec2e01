//! What the receiver keeps beside a job so that it can resume from verified data only:
//! an append-only progress log (which files are saved) and, per large file, a log of the
//! SHA-256 of each fixed-size block known to be on disk. Blocking I/O.
//!
//! Ordering invariants, so a crash at any point never claims bytes that are not there:
//! a block's hash is appended only after the partial file was `fdatasync`ed past it, and a
//! batch of verified files is logged as "publishing" only after their data is durable and
//! before any of them is renamed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wire::Manifest;

/// Size of the blocks the receiver proves it holds.
pub const BLOCK_BYTES: u64 = 1024 * 1024;
/// How much of a file is written between two checkpoints of its block log.
pub const CHECKPOINT_BYTES: u64 = 8 * BLOCK_BYTES;
const HASH_BYTES: usize = 32;

/// What a durable receive job persists; implemented by the daemon, which knows the rest
/// of the job (keys, deadline, directory).
pub trait Journal: Send + Sync {
    /// The offer was accepted: persist it before the sender hears so.
    fn accepted(&self, manifest: &Manifest) -> io::Result<()>;
    /// The job's own directory for the logs below.
    fn dir(&self) -> &Path;
}

/// One line of the progress log: files before `next` are saved; files `next..batch_end`
/// are durable and being renamed into place (and with them the folders, if `folders`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub next: u32,
    pub batch_end: u32,
    #[serde(default)]
    pub folders: bool,
}

fn progress_path(dir: &Path) -> PathBuf {
    dir.join("progress.log")
}

/// Appends `progress` and makes it durable before returning.
pub fn append_progress(dir: &Path, progress: &Progress) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(progress_path(dir))?;
    let mut line = serde_json::to_vec(progress).map_err(io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()
}

/// The last complete line of the progress log (a torn last line is ignored).
pub fn read_progress(dir: &Path) -> io::Result<Option<Progress>> {
    let file = match File::open(progress_path(dir)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in io::BufReader::new(file).split(b'\n') {
        if let Ok(progress) = serde_json::from_slice::<Progress>(&line?) {
            last = Some(progress);
        }
    }
    Ok(last)
}

pub fn block_log_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("blocks-{index}"))
}

/// Records, as a file is written, the SHA-256 of its prefix at each block boundary (the
/// digest of bytes `0..k * BLOCK_BYTES`), and tells when a checkpoint is due. It drives the
/// whole-file hasher the receiver keeps anyway, so every byte is hashed once: a prefix
/// digest is a clone of that state finalized (one compression), where a separate digest
/// per block would hash every byte twice.
pub struct BlockHasher {
    in_block: u64,
    /// Prefix digests of finished blocks not yet in the log.
    pending: Vec<[u8; HASH_BYTES]>,
    /// Bytes covered by finished blocks (logged or pending).
    finished: u64,
    /// Bytes covered by the log when the last checkpoint was requested.
    checkpointed: u64,
}

impl BlockHasher {
    /// Continues after `offset` bytes already covered by the log (a whole number of
    /// blocks, as [`verified_prefix`] returns).
    pub fn starting_at(offset: u64) -> BlockHasher {
        BlockHasher {
            in_block: offset % BLOCK_BYTES,
            pending: Vec::new(),
            finished: offset - offset % BLOCK_BYTES,
            checkpointed: offset - offset % BLOCK_BYTES,
        }
    }

    /// Feeds `data` into `whole`, the hasher over the file from its first byte, noting the
    /// prefix digest at every block boundary crossed.
    pub fn update(&mut self, whole: &mut Sha256, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (BLOCK_BYTES - self.in_block) as usize;
            let (head, rest) = data.split_at(room.min(data.len()));
            whole.update(head);
            self.in_block += head.len() as u64;
            data = rest;
            if self.in_block == BLOCK_BYTES {
                self.pending.push(whole.clone().finalize().into());
                self.finished += BLOCK_BYTES;
                self.in_block = 0;
            }
        }
    }

    /// The block hashes to log, once `CHECKPOINT_BYTES` more are finished.
    pub fn checkpoint_due(&mut self) -> Option<Vec<[u8; HASH_BYTES]>> {
        if self.finished - self.checkpointed < CHECKPOINT_BYTES {
            return None;
        }
        self.checkpointed = self.finished;
        Some(std::mem::take(&mut self.pending))
    }

    /// A checkpoint could not be queued: keep its hashes for the next one.
    pub fn put_back(&mut self, mut hashes: Vec<[u8; HASH_BYTES]>) {
        self.checkpointed -= hashes.len() as u64 * BLOCK_BYTES;
        hashes.append(&mut self.pending);
        self.pending = hashes;
    }
}

/// Appends prefix digests after making the data they describe durable. Runs off the writer.
pub fn checkpoint(data: &File, log: &Path, hashes: &[[u8; HASH_BYTES]]) -> io::Result<()> {
    data.sync_data()?;
    let mut file = OpenOptions::new().create(true).append(true).open(log)?;
    file.write_all(&hashes.concat())
}

/// Reads the partial `data` (as opened for reading and writing, or why it could not be)
/// once against its block log (the prefix digest at each block boundary) and returns how
/// many leading bytes are proven, with the SHA-256 state over exactly those bytes.
/// Truncates the partial and the log to that prefix, so whatever follows is written afresh.
/// A missing partial proves nothing. A log from a build that stored one digest per block
/// proves the first block only (its first entry is also a prefix digest).
pub fn verified_prefix(data: io::Result<File>, log: &Path) -> io::Result<(u64, Sha256)> {
    let hashes = match std::fs::read(log) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut whole = Sha256::new();
    let mut file = match data {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, whole)),
        Err(e) => return Err(e),
    };
    let mut good = 0u64;
    let mut buf = vec![0u8; BLOCK_BYTES as usize];
    for expected in hashes.chunks_exact(HASH_BYTES) {
        let n = read_full(&mut file, &mut buf)?;
        if n as u64 != BLOCK_BYTES {
            break;
        }
        let mut longer = whole.clone();
        longer.update(&buf[..n]);
        if longer.clone().finalize().as_slice() != expected {
            break;
        }
        whole = longer;
        good += 1;
    }
    let offset = good * BLOCK_BYTES;
    file.set_len(offset)?;
    file.seek(SeekFrom::Start(offset))?;
    let log_file = OpenOptions::new().write(true).open(log);
    if let Ok(log_file) = log_file {
        log_file.set_len(good * HASH_BYTES as u64)?;
    }
    Ok((offset, whole))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_log_keeps_the_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_progress(dir.path()).unwrap(), None);
        let a = Progress {
            next: 0,
            batch_end: 3,
            folders: false,
        };
        let b = Progress {
            next: 3,
            batch_end: 5,
            folders: true,
        };
        append_progress(dir.path(), &a).unwrap();
        append_progress(dir.path(), &b).unwrap();
        assert_eq!(read_progress(dir.path()).unwrap(), Some(b));
        // A crash mid-append leaves a torn line: the one before it still stands.
        let mut log = OpenOptions::new()
            .append(true)
            .open(progress_path(dir.path()))
            .unwrap();
        log.write_all(br#"{"next":5,"bat"#).unwrap();
        assert_eq!(read_progress(dir.path()).unwrap(), Some(b));
    }

    #[test]
    fn prefix_stops_at_the_first_block_that_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("part");
        let log = dir.path().join("blocks");
        let block = BLOCK_BYTES as usize;
        let bytes: Vec<u8> = (0..block * 4 + 100).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&data_path, &bytes).unwrap();
        let mut hasher = BlockHasher::starting_at(0);
        let mut whole = Sha256::new();
        hasher.update(&mut whole, &bytes);
        assert_eq!(whole.finalize(), Sha256::digest(&bytes), "every byte once");
        let hashes = std::mem::take(&mut hasher.pending);
        assert_eq!(hashes.len(), 4, "the short tail is not a block");
        for (k, hash) in hashes.iter().enumerate() {
            let prefix = Sha256::digest(&bytes[..(k + 1) * block]);
            assert_eq!(
                hash.as_slice(),
                prefix.as_slice(),
                "block {k}: the prefix digest"
            );
        }
        checkpoint(&File::open(&data_path).unwrap(), &log, &hashes[..3]).unwrap();

        // Flip one byte in the second block: only the first block stays proven.
        let mut damaged = bytes.clone();
        damaged[block + 10] ^= 0xff;
        std::fs::write(&data_path, &damaged).unwrap();
        let open = || OpenOptions::new().read(true).write(true).open(&data_path);
        let (offset, state) = verified_prefix(open(), &log).unwrap();
        assert_eq!(offset, BLOCK_BYTES);
        assert_eq!(state.finalize(), Sha256::digest(&bytes[..block]));
        assert_eq!(std::fs::metadata(&data_path).unwrap().len(), BLOCK_BYTES);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 32);

        // No log: nothing is proven, whatever the file holds.
        std::fs::remove_file(&log).unwrap();
        assert_eq!(verified_prefix(open(), &log).unwrap().0, 0);
        let missing = File::open(dir.path().join("missing"));
        assert_eq!(verified_prefix(missing, &log).unwrap().0, 0);
    }

    #[test]
    fn checkpoints_come_every_few_blocks_and_survive_a_full_queue() {
        let mut hasher = BlockHasher::starting_at(0);
        let mut whole = Sha256::new();
        let chunk = vec![1u8; 64 * 1024];
        let mut logged = 0;
        for _ in 0..(3 * CHECKPOINT_BYTES as usize / chunk.len()) {
            hasher.update(&mut whole, &chunk);
            if let Some(hashes) = hasher.checkpoint_due() {
                if logged == 0 {
                    hasher.put_back(hashes);
                    logged = -1;
                } else {
                    logged += hashes.len() as i64;
                }
            }
        }
        assert_eq!(
            logged + 1,
            (3 * CHECKPOINT_BYTES / BLOCK_BYTES) as i64,
            "every block is logged exactly once"
        );
    }

    #[test]
    fn a_resumed_file_logs_the_same_digests_as_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("part");
        let log = dir.path().join("blocks");
        let block = BLOCK_BYTES as usize;
        let bytes: Vec<u8> = (0..block * 3).map(|i| (i * 13 % 241) as u8).collect();
        let mut one_pass = BlockHasher::starting_at(0);
        one_pass.update(&mut Sha256::new(), &bytes);

        // Two blocks written and logged, then a stop; resume proves them and goes on.
        let mut first = BlockHasher::starting_at(0);
        first.update(&mut Sha256::new(), &bytes[..2 * block + 5]);
        std::fs::write(&data_path, &bytes[..2 * block + 5]).unwrap();
        checkpoint(&File::open(&data_path).unwrap(), &log, &first.pending).unwrap();
        let open = OpenOptions::new().read(true).write(true).open(&data_path);
        let (offset, mut whole) = verified_prefix(open, &log).unwrap();
        assert_eq!(offset, 2 * BLOCK_BYTES, "the torn tail is not proven");
        let mut resumed = BlockHasher::starting_at(offset);
        resumed.update(&mut whole, &bytes[offset as usize..]);
        assert_eq!(resumed.pending, one_pass.pending[2..]);
        assert_eq!(whole.finalize(), Sha256::digest(&bytes));
    }

    #[test]
    fn a_log_of_per_block_digests_proves_only_the_first_block() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("part");
        let log = dir.path().join("blocks");
        let block = BLOCK_BYTES as usize;
        let bytes: Vec<u8> = (0..block * 3).map(|i| (i * 5 % 239) as u8).collect();
        std::fs::write(&data_path, &bytes).unwrap();
        // What builds before prefix digests logged: each block's own digest.
        let old: Vec<[u8; HASH_BYTES]> = bytes
            .chunks(block)
            .map(|b| Sha256::digest(b).into())
            .collect();
        checkpoint(&File::open(&data_path).unwrap(), &log, &old).unwrap();
        let open = OpenOptions::new().read(true).write(true).open(&data_path);
        let (offset, state) = verified_prefix(open, &log).unwrap();
        assert_eq!(offset, BLOCK_BYTES, "no byte past what a digest proves");
        assert_eq!(state.finalize(), Sha256::digest(&bytes[..block]));
        assert_eq!(std::fs::metadata(&data_path).unwrap().len(), BLOCK_BYTES);
    }
}
