//! The receiving side: check the offer, ask, then write each file to a partial file while
//! hashing it, and publish it under a free name only after its SHA-256 matched.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::link::{Incoming, Link};
use super::names::{Limits, escape_for_terminal, validate_offer};
use super::sender::{cancel_peer, control, send_control, unexpected};
use super::wire::{Control, FileEntry};
use super::{FLUSH_LIMIT, Observer, PROGRESS_INTERVAL, TransferError, hex_digest, store};

/// The reject reason for a person saying no, so the sender can say so plainly.
pub const DECLINED: &str = "declined";
/// Chunks queued for the disk writer: 4 MiB at 64 KiB per chunk.
const WRITE_QUEUE_CHUNKS: usize = 64;

enum WriteCommand {
    Start { index: u32 },
    Data(Bytes),
    End { index: u32, sha256: String },
}

enum WriteOutcome {
    Saved { index: u32, path: PathBuf },
    Failed(TransferError),
}

/// Runs the receiving side. `approve` is asked once, after the offer passed every check.
/// Returns the paths the files were saved under, in offer order.
pub async fn receive(
    link: &dyn Link,
    dir: &Path,
    limits: &Limits,
    observer: &dyn Observer,
    approve: impl Future<Output = bool> + Send,
    cancel: &CancellationToken,
) -> Result<Vec<PathBuf>, TransferError> {
    let mut files = Vec::new();
    loop {
        let more = tokio::select! {
            _ = cancel.cancelled() => return Err(cancel_peer(link, "the receiver cancelled").await),
            incoming = link.recv() => match control(incoming)? {
                Control::Offer { files: part, more } => {
                    files.extend(part);
                    more
                }
                Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
                other => return Err(unexpected(&other)),
            },
        };
        // Count as the parts arrive, so an endless offer cannot grow memory without bound.
        let limit = limits.max_files.min(super::names::MAX_FILES);
        if files.len() > limit {
            let error = TransferError::BadOffer(super::names::NameError::TooMany {
                count: files.len(),
                limit,
            });
            return Err(reject(link, &error.to_string(), error).await);
        }
        if !more {
            break;
        }
    }
    if let Err(error) = check_offer(&files, dir, limits) {
        return Err(reject(link, &error.to_string(), error).await);
    }
    observer.offered(&files);
    let accepted = tokio::select! {
        _ = cancel.cancelled() => return Err(cancel_peer(link, "the receiver cancelled").await),
        accepted = approve => accepted,
        incoming = link.recv() => match control(incoming)? {
            Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
            other => return Err(unexpected(&other)),
        },
    };
    if !accepted {
        return Err(reject(link, DECLINED, TransferError::Declined).await);
    }
    send_control(link, &Control::Accept).await?;

    let written = Arc::new(AtomicU64::new(0));
    let (commands, command_rx) = mpsc::channel(WRITE_QUEUE_CHUNKS);
    let (outcome_tx, mut outcomes) = mpsc::channel(16);
    let writer = {
        let (dir, files, written) = (dir.to_owned(), files.clone(), written.clone());
        tokio::task::spawn_blocking(move || {
            write_all(&dir, &files, command_rx, &outcome_tx, &written)
        })
    };
    let result = receive_files(
        link,
        &files,
        commands,
        &mut outcomes,
        &written,
        observer,
        cancel,
    )
    .await;
    // The writer removes any partial file once its command queue closes; wait for that
    // so no partial outlives the job.
    drop(outcomes);
    let _ = writer.await;
    result
}

/// Tells the sender the offer is refused and why, waits for that to arrive, and returns
/// `error` for our own side.
async fn reject(link: &dyn Link, reason: &str, error: TransferError) -> TransferError {
    let reject = Control::Reject {
        reason: reason.to_owned(),
    };
    let _ = send_control(link, &reject).await;
    link.flush(FLUSH_LIMIT).await;
    error
}

fn check_offer(files: &[FileEntry], dir: &Path, limits: &Limits) -> Result<(), TransferError> {
    let total = validate_offer(files, limits)?;
    let available = store::free_space(dir).map_err(|e| {
        TransferError::io(
            format!("cannot use download directory {}", dir.display()),
            e,
        )
    })?;
    if total > available {
        return Err(TransferError::NotEnoughSpace {
            needed: total,
            available,
        });
    }
    Ok(())
}

/// Where the incoming byte stream is within the offer.
struct Cursor {
    next_index: u32,
    current: Option<(u32, u64)>,
}

async fn receive_files(
    link: &dyn Link,
    files: &[FileEntry],
    commands: mpsc::Sender<WriteCommand>,
    outcomes: &mut mpsc::Receiver<WriteOutcome>,
    written: &AtomicU64,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<Vec<PathBuf>, TransferError> {
    let mut saved = Vec::with_capacity(files.len());
    let mut cursor = Cursor {
        next_index: 0,
        current: None,
    };
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    let mut last_reported = u64::MAX;
    let mut all_in = false;
    let mut pending: Option<WriteCommand> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancel_peer(link, "the receiver cancelled").await),
            outcome = outcomes.recv() => match outcome {
                Some(WriteOutcome::Saved { index, path }) => {
                    observer.file_verified(index as usize, Some(&path));
                    send_control(link, &Control::FileVerified { index }).await?;
                    saved.push(path);
                    if saved.len() == files.len() {
                        observer.progress(written.load(Ordering::Relaxed));
                        wait_for_done(link).await;
                        return Ok(saved);
                    }
                }
                Some(WriteOutcome::Failed(error)) => {
                    let index = cursor.next_index.saturating_sub(1);
                    let _ = send_control(link, &Control::FileFailed { index, reason: error.to_string() }).await;
                    link.flush(FLUSH_LIMIT).await;
                    return Err(error);
                }
                None => return Err(TransferError::Protocol("disk writer stopped".into())),
            },
            _ = ticker.tick() => {
                let done = written.load(Ordering::Relaxed);
                if done != last_reported {
                    last_reported = done;
                    observer.progress(done);
                    send_control(link, &Control::Progress { bytes: done }).await?;
                }
            }
            // Handing a command to the writer never blocks this loop: the writer may itself
            // be waiting for us to take its outcomes.
            permit = commands.reserve(), if pending.is_some() => {
                let Ok(permit) = permit else {
                    return Err(TransferError::Protocol("disk writer stopped".into()));
                };
                let Some(command) = pending.take() else { continue };
                let last = matches!(command, WriteCommand::End { index, .. } if index as usize + 1 == files.len());
                permit.send(command);
                // After the last file, only outcomes matter.
                all_in = last;
            }
            incoming = link.recv(), if !all_in && pending.is_none() => {
                let command = match incoming {
                    Some(Incoming::Binary(data)) => match accept_data(&mut cursor, files, data) {
                        Ok(command) => command,
                        Err(what) => return Err(protocol(link, &what).await),
                    },
                    Some(Incoming::Text(_)) | None => match control(incoming)? {
                        Control::FileStart { index } => {
                            if cursor.current.is_some() || index != cursor.next_index || index as usize >= files.len() {
                                return Err(protocol(link, "file_start out of order").await);
                            }
                            cursor.current = Some((index, 0));
                            cursor.next_index += 1;
                            WriteCommand::Start { index }
                        }
                        Control::FileEnd { index, sha256 } => {
                            match cursor.current.take() {
                                Some((current, received)) if current == index && received == files[index as usize].size => {}
                                _ => return Err(protocol(link, "file_end does not match the data sent").await),
                            }
                            WriteCommand::End { index, sha256 }
                        }
                        Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
                        other => return Err(protocol(link, &unexpected(&other).to_string()).await),
                    },
                };
                pending = Some(command);
            }
        }
    }
}

fn accept_data(
    cursor: &mut Cursor,
    files: &[FileEntry],
    data: Bytes,
) -> Result<WriteCommand, String> {
    let Some((index, received)) = cursor.current.as_mut() else {
        return Err("file data outside a file".into());
    };
    let size = files[*index as usize].size;
    *received += data.len() as u64;
    if *received > size {
        return Err(format!(
            "more bytes than announced for {}",
            escape_for_terminal(&files[*index as usize].name)
        ));
    }
    Ok(WriteCommand::Data(data))
}

async fn protocol(link: &dyn Link, what: &str) -> TransferError {
    let _ = send_control(
        link,
        &Control::Cancel {
            reason: format!("protocol error: {what}"),
        },
    )
    .await;
    link.flush(FLUSH_LIMIT).await;
    TransferError::Protocol(what.to_owned())
}

/// After the last verification, the sender says `done` and closes; wait for it briefly so
/// our own last message is not cut off by closing first.
async fn wait_for_done(link: &dyn Link) {
    let wait = async {
        while let Some(incoming) = link.recv().await {
            if let Incoming::Text(text) = incoming
                && matches!(Control::decode(&text), Ok(Control::Done))
            {
                return;
            }
        }
    };
    if tokio::time::timeout(FLUSH_LIMIT, wait).await.is_err() {
        debug!("sender did not say done; closing anyway");
    }
}

/// The current partial file: removed unless it was published.
struct Partial {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    published: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Once published, the partial name may already belong to another transfer.
        if self.published {
            return;
        }
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(%error, path = %self.path.display(), "cannot remove partial file");
        }
    }
}

/// The disk side: a writer thread (this one) and a publisher thread. The writer creates,
/// writes and verifies one partial at a time; the publisher makes verified files durable
/// and names them in batches, so flushing never stops the writer from taking data.
fn write_all(
    dir: &Path,
    files: &[FileEntry],
    commands: mpsc::Receiver<WriteCommand>,
    outcomes: &mpsc::Sender<WriteOutcome>,
    written: &AtomicU64,
) {
    let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel(VERIFIED_QUEUE);
    // The scope joins the publisher before returning, so no partial outlives the job.
    std::thread::scope(|scope| {
        scope.spawn(|| publish_all(dir, files, verified_rx, outcomes));
        write_files(dir, files, commands, verified_tx, outcomes, written);
    });
}

fn write_files(
    dir: &Path,
    files: &[FileEntry],
    mut commands: mpsc::Receiver<WriteCommand>,
    verified: std::sync::mpsc::SyncSender<(u32, Partial)>,
    outcomes: &mpsc::Sender<WriteOutcome>,
    written: &AtomicU64,
) {
    let fail = |error: TransferError| {
        let _ = outcomes.blocking_send(WriteOutcome::Failed(error));
    };
    let mut partial: Option<Partial> = None;
    while let Some(command) = commands.blocking_recv() {
        match command {
            WriteCommand::Start { index } => {
                let name = &files[index as usize].name;
                match store::create_partial(dir, name) {
                    Ok((file, path)) => {
                        partial = Some(Partial {
                            file,
                            path,
                            hasher: Sha256::new(),
                            published: false,
                        })
                    }
                    Err(e) => {
                        return fail(TransferError::io(
                            format!("cannot create a file in {}", dir.display()),
                            e,
                        ));
                    }
                }
            }
            WriteCommand::Data(data) => {
                let Some(current) = partial.as_mut() else {
                    return;
                };
                if let Err(e) = current.file.write_all(&data) {
                    return fail(TransferError::io("cannot write the received file", e));
                }
                current.hasher.update(&data);
                written.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            WriteCommand::End { index, sha256 } => {
                let Some(current) = partial.take() else {
                    return;
                };
                let actual = hex_digest(&current.hasher.clone().finalize());
                if !actual.eq_ignore_ascii_case(&sha256) {
                    let name = &files[index as usize].name;
                    return fail(TransferError::VerificationFailed(escape_for_terminal(name)));
                }
                if verified.send((index, current)).is_err() {
                    // The publisher stopped on an error it has already reported.
                    return;
                }
            }
        }
    }
}

/// Publishes verified files in order, a batch at a time: when the batch is big, when its
/// oldest file has waited long enough, or at the last file.
fn publish_all(
    dir: &Path,
    files: &[FileEntry],
    verified: std::sync::mpsc::Receiver<(u32, Partial)>,
    outcomes: &mpsc::Sender<WriteOutcome>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let dir_handle = match File::open(dir) {
        Ok(handle) => handle,
        Err(e) => {
            let error = TransferError::io(format!("cannot open {}", dir.display()), e);
            let _ = outcomes.blocking_send(WriteOutcome::Failed(error));
            return;
        }
    };
    let mut batch = Batch::default();
    loop {
        let next = match batch.since {
            None => verified.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => verified.recv_timeout(BATCH_WAIT.saturating_sub(since.elapsed())),
        };
        let publish_now = match next {
            Ok((index, partial)) => {
                batch.bytes += files[index as usize].size;
                batch.files.push((index, partial));
                batch.since.get_or_insert_with(Instant::now);
                let last = index as usize + 1 == files.len();
                let full = batch.files.len() >= BATCH_FILES || batch.bytes >= BATCH_BYTES;
                last || full
                    || batch
                        .since
                        .is_some_and(|since| since.elapsed() >= BATCH_WAIT)
            }
            Err(RecvTimeoutError::Timeout) => true,
            // The writer is done or failed; an unpublished batch is removed as it drops.
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if publish_now {
            match publish_batch(&mut batch, dir, &dir_handle, files) {
                Ok(saved) => {
                    for (index, path) in saved {
                        if outcomes
                            .blocking_send(WriteOutcome::Saved { index, path })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(error) => {
                    let _ = outcomes.blocking_send(WriteOutcome::Failed(error));
                    return;
                }
            }
        }
    }
}

/// Verified files queued between the writer and the publisher (each holds a descriptor).
const VERIFIED_QUEUE: usize = 64;
/// Most verified files waiting to be published together (each holds a descriptor).
const BATCH_FILES: usize = 256;
/// Longest a verified file waits for others to share its flush.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Most verified bytes waiting to be published together.
const BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// Verified partial files waiting for one flush to disk and their final names.
#[derive(Default)]
struct Batch {
    files: Vec<(u32, Partial)>,
    bytes: u64,
    /// When the oldest waiting file was verified.
    since: Option<Instant>,
}

/// Makes a batch of verified files durable, then names them, then makes the names durable:
/// one `fsync` for a lone file or one `syncfs` for many, and one directory `fsync`, instead
/// of two `fsync`s per file. A name never points at data that is not on disk.
fn publish_batch(
    batch: &mut Batch,
    dir: &Path,
    dir_handle: &File,
    files: &[FileEntry],
) -> Result<Vec<(u32, PathBuf)>, TransferError> {
    let flushed = match batch.files.as_slice() {
        [(_, only)] => only.file.sync_all(),
        _ => store::sync_filesystem(dir_handle),
    };
    flushed.map_err(|e| TransferError::io("cannot flush the received files to disk", e))?;
    let mut saved = Vec::with_capacity(batch.files.len());
    for (index, mut current) in batch.files.drain(..) {
        let path = store::publish(dir, &current.path, &files[index as usize].name)
            .map_err(|e| TransferError::io("cannot give the received file its name", e))?;
        current.published = true;
        saved.push((index, path));
    }
    batch.bytes = 0;
    batch.since = None;
    dir_handle
        .sync_all()
        .map_err(|e| TransferError::io("cannot flush the download directory", e))?;
    Ok(saved)
}
