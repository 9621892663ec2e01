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

mod data;
mod disk;
use data::*;
use disk::*;

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
