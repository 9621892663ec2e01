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

use super::beneath::Root;
use super::fence::DiskFence;
use super::journal::{self, BlockHasher, Journal, Progress};
use super::layout::Layout;
use super::link::{Incoming, Link};
use super::names::{Limits, escape_for_terminal, validate_offer};
use super::sender::{cancel_peer, control, send_control, unexpected};
use super::wire::{Control, FileEntry, Manifest};
use super::{FLUSH_LIMIT, Observer, PROGRESS_INTERVAL, TransferError, hex_digest, store};
use std::sync::mpsc::TrySendError;

/// The reject reason for a person saying no, so the sender can say so plainly.
pub const DECLINED: &str = "declined";
/// The reject reason for a message from a sender who may not send one.
const NO_MESSAGES: &str = "this receiver takes no messages from nearby devices: send a file";
/// The reject reason for a message whose receiver did not say to show it.
const MESSAGE_NOT_SHOWN: &str =
    "the receiver did not confirm the authentication string, so the message was not shown";
/// Chunks queued for the disk writer: 4 MiB at 64 KiB per chunk.
const WRITE_QUEUE_CHUNKS: usize = 64;

enum WriteCommand {
    Start { index: u32, offset: u64 },
    Data(Bytes),
    End { index: u32, sha256: String },
}

enum WriteOutcome {
    Saved { index: u32, path: Option<PathBuf> },
    FolderSaved(PathBuf),
    Failed(TransferError),
}

/// Where and how a job receives.
pub struct Plan {
    pub dir: PathBuf,
    pub limits: Limits,
    /// Whether a message instead of files is taken. A message is shown without asking
    /// anyone, so it is refused from a sender nobody has vouched for (a nearby device,
    /// whose string only the sender's person compared).
    pub messages: bool,
    /// Random per job; part of every partial name so a resumed job finds its own.
    pub tag: String,
    /// Present for a durable job: partial files then outlive an interruption.
    pub journal: Option<Arc<dyn Journal>>,
    /// Held by whatever touches the partial files, so a resume starts only after the disk
    /// threads of the run it follows have stopped.
    pub disk: DiskFence,
    /// Space promised to every transfer the daemon is receiving (one ledger per daemon).
    pub space: Arc<super::space::SpaceLedger>,
}

/// Where a (resumed) transfer starts: files before `index` are saved; file `index` has
/// `offset` proven bytes whose SHA-256 state is `state`.
struct StartPoint {
    index: u32,
    offset: u64,
    state: Sha256,
}

/// What `receive` asks its `approve` about, once per transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// Whether to take the offer that passed every check (`Observer::offered` listed it).
    Offer,
    /// Whether to show the message the sender sent instead of files: the caller decides
    /// whom to ask, if anyone (a message is shown as the sender's words).
    Message,
}

/// The answer to a [`Question`]: a "no" says why, since the sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Yes,
    /// The person said no (or did not answer in time).
    Declined,
    /// Manual signaling: the person did not confirm the authentication string, so what
    /// was offered may come from whoever carried the pasted descriptions.
    NotCompared,
}

impl Answer {
    /// A plain yes or no, as `approval` gives it.
    pub fn from_yes(yes: bool) -> Answer {
        if yes { Answer::Yes } else { Answer::Declined }
    }
}

/// Runs the receiving side of a new transfer. `approve` is asked once: about the offer,
/// after it passed every check, or about a message, before it is shown. Returns the offer
/// once every file is saved.
pub async fn receive<F>(
    link: &dyn Link,
    plan: &Plan,
    observer: &dyn Observer,
    approve: impl FnOnce(Question) -> F + Send,
    cancel: &CancellationToken,
) -> Result<Manifest, TransferError>
where
    F: Future<Output = Answer> + Send,
{
    let manifest = match read_offer(link, &plan.limits, cancel).await? {
        Offered::Files(manifest) => manifest,
        Offered::Text(_) if !plan.messages => {
            let error = TransferError::Rejected(NO_MESSAGES.to_owned());
            return Err(reject(link, NO_MESSAGES, error).await);
        }
        Offered::Text(text) => {
            if text.len() > super::wire::MAX_TEXT_BYTES {
                let error = TransferError::Protocol(format!(
                    "a text message longer than {} bytes",
                    super::wire::MAX_TEXT_BYTES
                ));
                return Err(reject(link, "the message is too long", error).await);
            }
            observer.message_offered();
            match decided(link, approve(Question::Message), cancel).await? {
                Answer::Yes => {}
                Answer::Declined => {
                    return Err(reject(link, DECLINED, TransferError::Declined).await);
                }
                Answer::NotCompared => {
                    return Err(reject(link, MESSAGE_NOT_SHOWN, TransferError::Declined).await);
                }
            }
            receive_text(link, &text, observer, cancel).await?;
            return Ok(Manifest::default());
        }
    };
    // Up to 100,000 names and a statvfs: a blocking thread, not a worker that drives peers.
    let checked = {
        let (manifest, dir, limits) = (manifest.clone(), plan.dir.clone(), plan.limits);
        tokio::task::spawn_blocking(move || check_offer(&manifest, &dir, &limits))
            .await
            .unwrap_or_else(|_| Err(TransferError::Protocol("checking the offer stopped".into())))
    };
    // Held from before the question, so a second offer that only fits without this one
    // is refused before anyone is asked.
    let promise = checked.and_then(|disk| {
        plan.space
            .promise(disk.fs, disk.free, disk.needed)
            .map_err(|short| TransferError::NotEnoughSpace {
                needed: disk.needed,
                available: short.free.saturating_sub(short.promised),
                promised: short.promised,
            })
    });
    let promise = match promise {
        Ok(promise) => promise,
        Err(error) => return Err(reject(link, &error.peer_reason(), error).await),
    };
    observer.offered(&manifest);
    match decided(link, approve(Question::Offer), cancel).await? {
        Answer::Yes => {}
        Answer::Declined => return Err(reject(link, DECLINED, TransferError::Declined).await),
        Answer::NotCompared => {
            return Err(reject(link, MESSAGE_NOT_SHOWN, TransferError::Declined).await);
        }
    }
    if let Some(journal) = &plan.journal {
        let (journal, copy) = (journal.clone(), manifest.clone());
        let recorded = tokio::task::spawn_blocking(move || journal.accepted(&copy))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("recording the job stopped")));
        if let Err(e) = recorded {
            let error = TransferError::io("cannot record the job", e);
            return Err(reject(link, &error.peer_reason(), error).await);
        }
    }
    send_control(link, &Control::Accept).await?;
    let start = StartPoint {
        index: 0,
        offset: 0,
        state: Sha256::new(),
    };
    let observer = Promised {
        inner: observer,
        promise: &promise,
        total: manifest.total_bytes(),
    };
    run(link, plan, &manifest, start, &observer, cancel, true).await?;
    Ok(manifest)
}

/// Continues an accepted transfer on a new connection: finishes what the last run was
/// publishing, proves what is on disk, tells the sender where to go on from, and receives
/// the rest.
pub async fn resume(
    link: &dyn Link,
    plan: &Plan,
    manifest: &Manifest,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let start = {
        let (dir, tag, manifest) = (plan.dir.clone(), plan.tag.clone(), manifest.clone());
        let journal_dir = plan.journal.as_ref().map(|j| j.dir().to_owned());
        let guard = plan.disk.enter().await;
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            recover(
                &dir,
                &Layout::new(&manifest, &tag),
                &manifest,
                journal_dir.as_deref(),
            )
        })
        .await
        .map_err(|_| TransferError::Protocol("resume preparation stopped".into()))??
    };
    observer.offered(manifest);
    for index in 0..start.index as usize {
        observer.file_verified(index, None);
    }
    let done: u64 = manifest.files[..start.index as usize]
        .iter()
        .map(|f| f.size)
        .sum();
    observer.progress(done + start.offset);
    debug!(index = start.index, offset = start.offset, "resuming");
    send_control(
        link,
        &Control::Resume {
            index: start.index,
            offset: start.offset,
            sha256: hex_digest(&start.state.clone().finalize()),
        },
    )
    .await?;
    run(link, plan, manifest, start, observer, cancel, false).await
}

/// Removes every partial entry of this job from the download directory.
pub fn discard(dir: &Path, manifest: &Manifest, tag: &str) {
    let root = match Root::open(dir) {
        Ok(root) => root,
        Err(error) => {
            warn!(%error, "cannot open the download directory to remove partial files");
            return;
        }
    };
    let layout = Layout::new(manifest, tag);
    for top in 0..layout.tops().len() {
        let path = layout.partial_top(dir, top);
        if let Err(error) = store::remove_partial(&root, &path) {
            warn!(%error, path = %path.display(), "cannot remove partial file");
        }
    }
}

/// Whether a failure leaves the job resumable: the connection was lost, nothing was wrong
/// with the data or the request.
pub fn resumable(error: &TransferError) -> bool {
    matches!(error, TransferError::PeerGone)
}

/// What the sender offers: files, or a message instead.
enum Offered {
    Files(Manifest),
    Text(String),
}

/// The person's answer (`answer`), unless this side or the sender cancels first; anything
/// else the sender says meanwhile breaks the protocol.
async fn decided(
    link: &dyn Link,
    answer: impl Future<Output = Answer>,
    cancel: &CancellationToken,
) -> Result<Answer, TransferError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(cancel_peer(link, "the receiver cancelled").await),
        accepted = answer => Ok(accepted),
        incoming = link.recv() => match control(incoming)? {
            Control::Cancel { reason } => Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
            other => Err(unexpected(&other)),
        },
    }
}

/// A message instead of files, checked and allowed: nothing is written. Shown (escaped, by
/// whoever displays it), answered with `complete`, then the sender's `done` is awaited.
async fn receive_text(
    link: &dyn Link,
    text: &str,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    observer.text_received(text);
    send_control(link, &Control::Complete).await?;
    tokio::select! {
        _ = cancel.cancelled() => Err(cancel_peer(link, "the receiver cancelled").await),
        done = tokio::time::timeout(FLUSH_LIMIT * 2, link.recv()) => match done {
            Ok(incoming) => match control(incoming)? {
                Control::Done => Ok(()),
                other => Err(unexpected(&other)),
            },
            // The message is here; a sender that never says goodbye changes nothing.
            Err(_) => Ok(()),
        },
    }
}

async fn read_offer(
    link: &dyn Link,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Offered, TransferError> {
    let mut manifest = Manifest::default();
    loop {
        let more = tokio::select! {
            _ = cancel.cancelled() => return Err(cancel_peer(link, "the receiver cancelled").await),
            incoming = link.recv() => match control(incoming)? {
                Control::Text { text } if manifest == Manifest::default() => return Ok(Offered::Text(text)),
                Control::Offer { files, folders, skipped, more } => {
                    manifest.files.extend(files);
                    manifest.folders.extend(folders);
                    manifest.skipped.extend(skipped);
                    more
                }
                Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
                other => return Err(unexpected(&other)),
            },
        };
        // Count as the parts arrive, so an endless offer cannot grow memory without bound.
        let limit = limits.max_files.min(super::names::MAX_FILES);
        let count = manifest.files.len() + manifest.folders.len() + manifest.skipped.len();
        if count > limit {
            let error = TransferError::BadOffer(super::names::NameError::TooMany { count, limit });
            return Err(reject(link, &error.peer_reason(), error).await);
        }
        if !more {
            return Ok(Offered::Files(manifest));
        }
    }
}

/// Receives from `start` to the end, then keeps or removes the partial files depending on
/// whether the job can resume.
#[allow(clippy::too_many_arguments)]
async fn run(
    link: &dyn Link,
    plan: &Plan,
    manifest: &Manifest,
    start: StartPoint,
    observer: &dyn Observer,
    cancel: &CancellationToken,
    fresh: bool,
) -> Result<(), TransferError> {
    let result = transfer(link, plan, manifest, start, observer, cancel, fresh).await;
    if let Err(error) = &result
        && !(plan.journal.is_some() && resumable(error))
    {
        let (dir, tag, manifest) = (plan.dir.clone(), plan.tag.clone(), manifest.clone());
        let guard = plan.disk.enter().await;
        let _ = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            discard(&dir, &manifest, &tag)
        })
        .await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn transfer(
    link: &dyn Link,
    plan: &Plan,
    manifest: &Manifest,
    start: StartPoint,
    observer: &dyn Observer,
    cancel: &CancellationToken,
    fresh: bool,
) -> Result<(), TransferError> {
    let count = manifest.files.len() as u32;
    if start.index >= count {
        // Nothing left to receive: only folders (if any) remain to be put in place.
        let (dir, tag, manifest2) = (plan.dir.clone(), plan.tag.clone(), manifest.clone());
        let journal_dir = plan.journal.as_ref().map(|j| j.dir().to_owned());
        let guard = plan.disk.enter().await;
        let folders = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let layout = Layout::new(&manifest2, &tag);
            if let Some(journal_dir) = &journal_dir {
                let all = Progress {
                    next: count,
                    batch_end: count,
                    folders: true,
                };
                journal::append_progress(journal_dir, &all)
                    .map_err(|e| TransferError::io("cannot record progress", e))?;
            }
            let root = Root::open(&dir)
                .map_err(|e| TransferError::io_at("cannot open the download directory", &dir, e))?;
            publish_folders(&root, &layout, &manifest2)
        })
        .await
        .map_err(|_| TransferError::Protocol("publishing stopped".into()))??;
        for folder in &folders {
            observer.folder_saved(folder);
        }
        observer.progress(manifest.total_bytes());
        // A resumed sender learned this from our `resume` already.
        if fresh {
            send_control(link, &Control::Complete).await?;
        }
        wait_for_done(link).await;
        return Ok(());
    }
    let written = Arc::new(AtomicU64::new(
        manifest.files[..start.index as usize]
            .iter()
            .map(|f| f.size)
            .sum::<u64>()
            + start.offset,
    ));
    let (commands, command_rx) = mpsc::channel(WRITE_QUEUE_CHUNKS);
    let (outcome_tx, mut outcomes) = mpsc::channel(16);
    let cursor = Cursor {
        next_index: start.index,
        next_offset: start.offset,
        current: None,
    };
    let writer = {
        let dir = plan.dir.clone();
        let layout = Layout::new(manifest, &plan.tag);
        let manifest = manifest.clone();
        let journal = plan.journal.as_ref().map(|j| j.dir().to_owned());
        let written = written.clone();
        // Released only when the writer and the threads it scopes have all returned, even
        // if this future is dropped first (a lost connection).
        let guard = plan.disk.enter().await;
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let root = match Root::open(&dir) {
                Ok(root) => root,
                Err(e) => {
                    let error = TransferError::io_at("cannot open the download directory", &dir, e);
                    let _ = outcome_tx.blocking_send(WriteOutcome::Failed(error));
                    return;
                }
            };
            let disk = Disk {
                root,
                layout,
                manifest,
                journal,
            };
            write_all(&disk, start, command_rx, &outcome_tx, &written)
        })
    };
    let result = receive_files(
        link,
        &manifest.files,
        cursor,
        commands,
        &mut outcomes,
        &written,
        observer,
        cancel,
    )
    .await;
    // Wait for the writer so no file is still open or half-renamed when we return.
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

/// What an offer needs of the disk it would be written to.
struct DiskNeed {
    fs: super::space::Filesystem,
    free: u64,
    needed: u64,
}

fn check_offer(
    manifest: &Manifest,
    dir: &Path,
    limits: &Limits,
) -> Result<DiskNeed, TransferError> {
    use std::os::unix::fs::MetadataExt;
    let needed = validate_offer(manifest, limits)?;
    let unusable = |e| TransferError::io_at("cannot use the download directory", dir, e);
    let free = store::free_space(dir).map_err(unusable)?;
    let fs = std::fs::metadata(dir).map_err(unusable)?.dev();
    Ok(DiskNeed { fs, free, needed })
}

/// Passes progress on, and shrinks the transfer's space promise as its bytes land.
struct Promised<'a> {
    inner: &'a dyn Observer,
    promise: &'a super::space::Promise,
    total: u64,
}

impl Observer for Promised<'_> {
    fn offered(&self, offer: &Manifest) {
        self.inner.offered(offer);
    }
    fn progress(&self, bytes_done: u64) {
        self.promise
            .still_to_write(self.total.saturating_sub(bytes_done));
        self.inner.progress(bytes_done);
    }
    fn file_verified(&self, index: usize, saved: Option<&Path>) {
        self.inner.file_verified(index, saved);
    }
    fn folder_saved(&self, path: &Path) {
        self.inner.folder_saved(path);
    }
    fn text_received(&self, text: &str) {
        self.inner.text_received(text);
    }
}

/// Where the incoming byte stream is within the offer.
struct Cursor {
    next_index: u32,
    /// Where the next file starts: non-zero only for the first file after a resume.
    next_offset: u64,
    /// The file being received and the bytes of it seen so far (from its start).
    current: Option<(u32, u64)>,
}

#[allow(clippy::too_many_arguments)]
async fn receive_files(
    link: &dyn Link,
    files: &[FileEntry],
    mut cursor: Cursor,
    commands: mpsc::Sender<WriteCommand>,
    outcomes: &mut mpsc::Receiver<WriteOutcome>,
    written: &AtomicU64,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let mut saved = cursor.next_index as usize;
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    let mut last_reported = u64::MAX;
    let mut all_in = false;
    let mut pending: Option<WriteCommand> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancel_peer(link, "the receiver cancelled").await),
            outcome = outcomes.recv() => match outcome {
                Some(WriteOutcome::FolderSaved(path)) => observer.folder_saved(&path),
                Some(WriteOutcome::Saved { index, path }) => {
                    observer.file_verified(index as usize, path.as_deref());
                    send_control(link, &Control::FileVerified { index }).await?;
                    saved += 1;
                    if saved == files.len() {
                        observer.progress(written.load(Ordering::Relaxed));
                        wait_for_done(link).await;
                        return Ok(());
                    }
                }
                Some(WriteOutcome::Failed(error)) => {
                    let index = cursor.next_index.saturating_sub(1);
                    let _ = send_control(link, &Control::FileFailed {
                        index,
                        reason: error.peer_reason(),
                        mismatch: matches!(error, TransferError::VerificationFailed(_)),
                    }).await;
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
                        Control::FileStart { index, offset } => {
                            if cursor.current.is_some() || index != cursor.next_index || offset != cursor.next_offset || index as usize >= files.len() {
                                return Err(protocol(link, "file_start out of order").await);
                            }
                            cursor.current = Some((index, offset));
                            cursor.next_index += 1;
                            cursor.next_offset = 0;
                            WriteCommand::Start { index, offset }
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

/// Everything the disk side needs to know about the job.
struct Disk {
    /// The download directory: every file operation goes beneath this handle.
    root: Root,
    layout: Layout,
    manifest: Manifest,
    /// The job's state directory, for a durable job.
    journal: Option<PathBuf>,
}

/// The file being written. Left on disk if the job stops: a durable job resumes from it,
/// and the job's end removes it otherwise (see [`discard`]).
struct Partial {
    file: File,
    hasher: Sha256,
    /// Present in a durable job: the prefix digests for the resume log.
    blocks: Option<BlockHasher>,
}

/// A request to make a partial durable up to some point and then log its block hashes.
struct Checkpoint {
    file: File,
    log: PathBuf,
    hashes: Vec<[u8; 32]>,
}

/// The disk side: a writer thread (this one), a publisher thread and, for a durable job, a
/// checkpoint thread. The writer creates, writes and verifies one file at a time; the
/// publisher makes verified files durable and names them in batches, and the checkpointer
/// flushes large files and logs their blocks, so neither flush stops the writer.
fn write_all(
    disk: &Disk,
    start: StartPoint,
    commands: mpsc::Receiver<WriteCommand>,
    outcomes: &mpsc::Sender<WriteOutcome>,
    written: &AtomicU64,
) {
    let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel(VERIFIED_QUEUE);
    let (checkpoint_tx, checkpoint_rx) = std::sync::mpsc::sync_channel::<Checkpoint>(2);
    // The scope joins the helpers before returning, so no file is open after the job.
    std::thread::scope(|scope| {
        let first = start.index;
        scope.spawn(move || publish_all(disk, first, verified_rx, outcomes));
        scope.spawn(move || {
            for checkpoint in checkpoint_rx {
                if let Err(error) =
                    journal::checkpoint(&checkpoint.file, &checkpoint.log, &checkpoint.hashes)
                {
                    // Only resume gets worse: it proves fewer blocks.
                    warn!(%error, "cannot checkpoint the partial file");
                }
            }
        });
        write_files(
            disk,
            start,
            commands,
            verified_tx,
            checkpoint_tx,
            outcomes,
            written,
        );
    });
}

#[allow(clippy::too_many_arguments)]
fn write_files(
    disk: &Disk,
    start: StartPoint,
    mut commands: mpsc::Receiver<WriteCommand>,
    verified: std::sync::mpsc::SyncSender<(u32, Partial)>,
    checkpoints: std::sync::mpsc::SyncSender<Checkpoint>,
    outcomes: &mpsc::Sender<WriteOutcome>,
    written: &AtomicU64,
) {
    let fail = |error: TransferError| {
        let _ = outcomes.blocking_send(WriteOutcome::Failed(error));
    };
    let mut resume_state = Some(start);
    let mut partial: Option<(u32, Partial)> = None;
    while let Some(command) = commands.blocking_recv() {
        match command {
            WriteCommand::Start { index, offset } => {
                let path = disk.layout.partial_file(disk.root.path(), index as usize);
                let resumed = resume_state
                    .take()
                    .filter(|s| s.index == index && s.offset == offset && offset > 0);
                let opened = match &resumed {
                    Some(_) => store::reopen_partial(&disk.root, &path, offset),
                    None => store::create_partial(&disk.root, &path),
                };
                let file = match opened {
                    Ok(file) => file,
                    Err(e) => {
                        return fail(TransferError::io_at(
                            "cannot create a file in the download directory",
                            disk.root.path(),
                            e,
                        ));
                    }
                };
                let (hasher, offset) = match resumed {
                    Some(state) => (state.state, state.offset),
                    None => (Sha256::new(), 0),
                };
                let blocks = disk
                    .journal
                    .as_ref()
                    .map(|_| BlockHasher::starting_at(offset));
                partial = Some((
                    index,
                    Partial {
                        file,
                        hasher,
                        blocks,
                    },
                ));
            }
            WriteCommand::Data(data) => {
                let Some((index, current)) = partial.as_mut() else {
                    return;
                };
                if let Err(e) = current.file.write_all(&data) {
                    return fail(TransferError::io("cannot write the received file", e));
                }
                written.fetch_add(data.len() as u64, Ordering::Relaxed);
                let Some((blocks, journal)) = current.blocks.as_mut().zip(disk.journal.as_ref())
                else {
                    current.hasher.update(&data);
                    continue;
                };
                blocks.update(&mut current.hasher, &data);
                if let Some(hashes) = blocks.checkpoint_due() {
                    let request = current.file.try_clone().map(|file| Checkpoint {
                        file,
                        log: journal::block_log_path(journal, *index),
                        hashes,
                    });
                    match request {
                        Ok(request) => {
                            if let Err(TrySendError::Full(back)) = checkpoints.try_send(request) {
                                blocks.put_back(back.hashes);
                            }
                        }
                        Err(error) => warn!(%error, "cannot checkpoint the partial file"),
                    }
                }
            }
            WriteCommand::End { index, sha256 } => {
                let Some((_, current)) = partial.take() else {
                    return;
                };
                let actual = hex_digest(&current.hasher.clone().finalize());
                let entry = &disk.manifest.files[index as usize];
                if !actual.eq_ignore_ascii_case(&sha256) {
                    return fail(TransferError::VerificationFailed(escape_for_terminal(
                        &entry.name,
                    )));
                }
                if let Err(e) = store::apply_metadata(&current.file, entry.mtime, entry.executable)
                {
                    return fail(TransferError::io("cannot set the received file's time", e));
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
    disk: &Disk,
    first: u32,
    verified: std::sync::mpsc::Receiver<(u32, Partial)>,
    outcomes: &mpsc::Sender<WriteOutcome>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let files = &disk.manifest.files;
    let mut batch = Batch {
        first,
        ..Batch::default()
    };
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
            // The writer is done or failed; an unpublished batch stays partial.
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if publish_now {
            match publish_batch(&mut batch, disk) {
                Ok((saved, folders)) => {
                    // Folders first: the last file's verification ends the transfer.
                    for folder in folders {
                        if outcomes
                            .blocking_send(WriteOutcome::FolderSaved(folder))
                            .is_err()
                        {
                            return;
                        }
                    }
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
    /// Index of the first file not yet published.
    first: u32,
    files: Vec<(u32, Partial)>,
    bytes: u64,
    /// When the oldest waiting file was verified.
    since: Option<Instant>,
}

/// Makes a batch of verified files durable, logs it, then names them, then makes the names
/// durable: the batch's files flushed together on a few threads, and one directory `fsync`
/// instead of one per file. A name never points at data that is not on
/// disk, and the log always knows which partials may still need their name.
type Published = (Vec<(u32, Option<PathBuf>)>, Vec<PathBuf>);

fn publish_batch(batch: &mut Batch, disk: &Disk) -> Result<Published, TransferError> {
    let files: Vec<&File> = batch.files.iter().map(|(_, p)| &p.file).collect();
    let flushed = store::sync_files(&files);
    flushed.map_err(|e| TransferError::io("cannot flush the received files to disk", e))?;
    let end = batch.first + batch.files.len() as u32;
    let count = disk.manifest.files.len() as u32;
    if let Some(journal) = &disk.journal {
        let progress = Progress {
            next: batch.first,
            batch_end: end,
            folders: end == count,
        };
        journal::append_progress(journal, &progress)
            .map_err(|e| TransferError::io("cannot record progress", e))?;
    }
    let mut saved = Vec::with_capacity(batch.files.len());
    for (index, current) in batch.files.drain(..) {
        drop(current);
        saved.push((index, publish_file(disk, index)?));
    }
    let folders = if end == count {
        publish_folders(&disk.root, &disk.layout, &disk.manifest)?
    } else {
        Vec::new()
    };
    batch.first = end;
    batch.bytes = 0;
    batch.since = None;
    disk.root
        .sync()
        .map_err(|e| TransferError::io("cannot flush the download directory", e))?;
    Ok((saved, folders))
}

/// Renames a verified top-level file into place; a file inside a folder waits for its
/// folder (see [`publish_folders`]).
fn publish_file(disk: &Disk, index: u32) -> Result<Option<PathBuf>, TransferError> {
    if !disk.layout.is_top_file(index as usize) {
        return Ok(None);
    }
    let partial = disk.layout.partial_file(disk.root.path(), index as usize);
    store::publish(
        &disk.root,
        &partial,
        disk.layout.top_name_of(index as usize),
    )
    .map(Some)
    .map_err(|e| TransferError::io("cannot give the received file its name", e))
}

/// Creates the offered folders (empty ones too), gives them their times deepest first, and
/// renames each top-level folder into place under a free name. Safe to repeat: a folder
/// already renamed is no longer under its partial name. Returns where they went.
fn publish_folders(
    root: &Root,
    layout: &Layout,
    manifest: &Manifest,
) -> Result<Vec<PathBuf>, TransferError> {
    let io = |e| TransferError::io("cannot put the received folder in place", e);
    let dir = root.path();
    let mut pending = Vec::new();
    for top in (0..layout.tops().len()).filter(|&top| layout.tops()[top].folder) {
        if store::exists(root, &layout.partial_top(dir, top)).map_err(io)? {
            pending.push(top);
        }
    }
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut folders: Vec<_> = manifest.folders.iter().collect();
    folders.sort_by_key(|f| std::cmp::Reverse(f.name.matches('/').count()));
    for folder in &folders {
        root.create_dir_all(&layout.partial_folder(dir, &folder.name))
            .map_err(io)?;
    }
    for folder in &folders {
        store::set_folder_time(
            root,
            &layout.partial_folder(dir, &folder.name),
            folder.mtime,
        )
        .map_err(io)?;
    }
    let mut saved = Vec::with_capacity(pending.len());
    for top in pending.drain(..) {
        let name = &layout.tops()[top].name;
        saved.push(store::publish(root, &layout.partial_top(dir, top), name).map_err(io)?);
    }
    Ok(saved)
}

/// Brings the download directory back in line with the progress log after an
/// interruption and finds where to go on from. Reads the current file's partial once.
fn recover(
    dir: &Path,
    layout: &Layout,
    manifest: &Manifest,
    journal: Option<&Path>,
) -> Result<StartPoint, TransferError> {
    let io = |e| TransferError::io("cannot resume from the partial files", e);
    let root = Root::open(dir).map_err(io)?;
    let progress = match journal {
        Some(journal) => journal::read_progress(journal).map_err(io)?,
        None => None,
    }
    .unwrap_or_default();
    let count = manifest.files.len() as u32;
    if progress.batch_end > count || progress.next > progress.batch_end {
        return Err(TransferError::Protocol(
            "the progress log is damaged".into(),
        ));
    }
    // The logged batch was durable before the log said so; finish naming it.
    for index in progress.next..progress.batch_end {
        if layout.is_top_file(index as usize)
            && store::exists(&root, &layout.partial_file(dir, index as usize)).map_err(io)?
        {
            publish_file_at(&root, layout, index)?;
        }
    }
    if progress.folders {
        for folder in publish_folders(&root, layout, manifest)? {
            debug!(path = %folder.display(), "finished putting a folder in place");
        }
    }
    let index = progress.batch_end;
    if index == count {
        return Ok(StartPoint {
            index,
            offset: 0,
            state: Sha256::new(),
        });
    }
    let (offset, state) = match journal {
        Some(journal) => journal::verified_prefix(
            root.entry(&layout.partial_file(dir, index as usize), false)
                .and_then(|partial| partial.open_write()),
            &journal::block_log_path(journal, index),
        )
        .map_err(io)?,
        None => (0, Sha256::new()),
    };
    Ok(StartPoint {
        index,
        offset: offset.min(manifest.files[index as usize].size),
        state,
    })
}

fn publish_file_at(root: &Root, layout: &Layout, index: u32) -> Result<(), TransferError> {
    store::publish(
        root,
        &layout.partial_file(root.path(), index as usize),
        layout.top_name_of(index as usize),
    )
    .map(|_| ())
    .map_err(|e| TransferError::io("cannot give the received file its name", e))
}
