//! The sending side: offer, wait for acceptance, stream every file while hashing it, and
//! finish only when the receiver has verified each one.

use std::fs::File;
use std::io::Read;

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::link::{Incoming, Link};
use super::source::{self, OpenError, Sources};
use super::wire::{CHUNK_BYTES, Control, FileEntry};
use super::{FLUSH_LIMIT, Observer, TransferError, hex_digest};

/// Chunks read ahead of the channel. Small: the channel's own buffer is the real queue.
const READ_AHEAD_CHUNKS: usize = 8;

enum ReadItem {
    Start { index: u32, offset: u64 },
    Chunk(BytesMut),
    End { index: u32, sha256: String },
    Failed(TransferError),
}

/// Where reading starts: file `index`, after `offset` bytes the receiver proved it holds
/// with SHA-256 state `prefix`.
struct From {
    index: u32,
    offset: u64,
    prefix: Option<String>,
}

/// Runs the sending side of a new transfer over `link`. `accepted` is awaited once the
/// receiver said yes, before any data (it is lazy: nothing of it runs before). Returns once every file is verified.
pub async fn send(
    link: &dyn Link,
    sources: &Sources,
    observer: &dyn Observer,
    accepted: impl Future<Output = Result<(), TransferError>>,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    for part in Control::offer_parts(&sources.manifest) {
        send_control(link, &part).await?;
    }
    // The receiver may take a while: a person reads the offer and decides.
    tokio::select! {
        _ = cancel.cancelled() => return Err(cancel_peer(link, "the sender cancelled").await),
        incoming = link.recv() => match control(incoming)? {
            Control::Accept => {}
            Control::Reject { reason } if reason == super::receiver::DECLINED => return Err(TransferError::Declined),
            Control::Reject { reason } => return Err(TransferError::Rejected(super::names::peer_text(&reason))),
            Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
            other => return Err(unexpected(&other)),
        },
    }
    debug!(files = sources.paths.len(), "offer accepted");
    accepted.await?;
    let from = From {
        index: 0,
        offset: 0,
        prefix: None,
    };
    run(link, sources, from, observer, cancel).await
}

/// Sends a message instead of files (`p2p send --text`) and waits for the receiver to
/// have it.
pub async fn send_text(
    link: &dyn Link,
    text: &str,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    send_control(
        link,
        &Control::Text {
            text: text.to_owned(),
        },
    )
    .await?;
    tokio::select! {
        _ = cancel.cancelled() => Err(cancel_peer(link, "the sender cancelled").await),
        incoming = link.recv() => match control(incoming)? {
            Control::Complete => {
                send_control(link, &Control::Done).await?;
                link.flush(super::FLUSH_LIMIT).await;
                Ok(())
            }
            Control::Reject { reason } => Err(TransferError::Rejected(super::names::peer_text(&reason))),
            Control::Cancel { reason } => Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
            other => Err(unexpected(&other)),
        },
    }
}

/// Continues an accepted transfer on a new connection, from where the receiver says its
/// verified data ends. Reads that prefix once, to check it against the source.
pub async fn resume(
    link: &dyn Link,
    sources: &Sources,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let files = &sources.manifest.files;
    let from = tokio::select! {
        _ = cancel.cancelled() => return Err(cancel_peer(link, "the sender cancelled").await),
        incoming = tokio::time::timeout(FLUSH_LIMIT * 6, link.recv()) => {
            let incoming = incoming.map_err(|_| TransferError::PeerGone)?;
            match control(incoming)? {
                Control::Resume { index, offset, sha256 } => {
                    let valid = (index as usize) < files.len() && offset <= files[index as usize].size
                        || index as usize == files.len() && offset == 0;
                    if !valid {
                        return Err(TransferError::Protocol("resume point outside the offer".into()));
                    }
                    From { index, offset, prefix: Some(sha256) }
                }
                Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
                other => return Err(unexpected(&other)),
            }
        }
    };
    debug!(index = from.index, offset = from.offset, "resuming");
    observer.offered(&sources.manifest);
    for index in 0..from.index as usize {
        observer.file_verified(index, None);
    }
    run(link, sources, from, observer, cancel).await
}

async fn run(
    link: &dyn Link,
    sources: &Sources,
    from: From,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let entries = &sources.manifest.files;
    let total = sources.manifest.total_bytes();
    if from.index as usize == entries.len() {
        return finish(
            link,
            sources,
            from.index == 0 && entries.is_empty(),
            observer,
            cancel,
        )
        .await;
    }
    let (items_tx, mut items) = mpsc::channel(READ_AHEAD_CHUNKS);
    // Never larger than the peer accepts; 64 KiB otherwise (batched sends need equal runs).
    let chunk = link.max_message_bytes().clamp(1, CHUNK_BYTES);
    let first = from.index as usize;
    let reader = {
        let sources = sources.clone();
        tokio::task::spawn_blocking(move || read_all(&sources, from, chunk, &items_tx))
    };
    let result = stream(link, &mut items, entries, first, total, observer, cancel).await;
    // Closing the queue makes a reader blocked on a full queue give up.
    drop(items);
    let _ = reader.await;
    result
}

/// Every file is already saved at the receiver. With an offer of folders only, wait for
/// the receiver to say it created them.
async fn finish(
    link: &dyn Link,
    sources: &Sources,
    await_complete: bool,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    if await_complete {
        tokio::select! {
            _ = cancel.cancelled() => return Err(cancel_peer(link, "the sender cancelled").await),
            incoming = link.recv() => match control(incoming)? {
                Control::Complete => {}
                Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
                Control::FileFailed { reason, mismatch, .. } => return Err(TransferError::ReceiverFailed {
                    name: "the folders".into(),
                    reason: super::names::peer_text(&reason),
                    mismatch,
                }),
                other => return Err(unexpected(&other)),
            },
        }
    }
    observer.progress(sources.manifest.total_bytes());
    // `done` is on its way; waiting for it to be acknowledged is the caller's, after the
    // job is complete (`runner::close_after_done`).
    send_control(link, &Control::Done).await?;
    Ok(())
}

async fn stream(
    link: &dyn Link,
    items: &mut mpsc::Receiver<ReadItem>,
    entries: &[FileEntry],
    first: usize,
    total: u64,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let mut pending: Option<BytesMut> = None;
    let mut reading = true;
    let mut verified = first;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancel_peer(link, "the sender cancelled").await),
            incoming = link.recv() => match control(incoming)? {
                Control::Progress { bytes } => observer.progress(bytes.min(total)),
                Control::FileVerified { index } => {
                    let index = index as usize;
                    if index != verified || index >= entries.len() {
                        return Err(TransferError::Protocol("verification out of order".into()));
                    }
                    verified += 1;
                    observer.file_verified(index, None);
                    if verified == entries.len() {
                        observer.progress(total);
                        send_control(link, &Control::Done).await?;
                        return Ok(());
                    }
                }
                Control::FileFailed { index, reason, mismatch } => {
                    let name = entries.get(index as usize).map(|e| e.name.as_str()).unwrap_or("a file");
                    return Err(TransferError::ReceiverFailed {
                        name: super::names::escape_for_terminal(name),
                        // The peer's words: escaped, and kept to one short line.
                        reason: super::names::peer_text(&reason),
                        mismatch,
                    });
                }
                Control::Cancel { reason } => return Err(TransferError::PeerCancelled(super::names::peer_text(&reason))),
                other => return Err(unexpected(&other)),
            },
            _ = link.writable(), if pending.is_some() => {
                if let Some(chunk) = pending.take() {
                    link.send_binary(chunk).await.map_err(|_| TransferError::PeerGone)?;
                }
            }
            item = items.recv(), if pending.is_none() && reading => match item {
                Some(ReadItem::Start { index, offset }) => send_control(link, &Control::FileStart { index, offset }).await?,
                Some(ReadItem::Chunk(chunk)) => pending = Some(chunk),
                Some(ReadItem::End { index, sha256 }) => send_control(link, &Control::FileEnd { index, sha256 }).await?,
                Some(ReadItem::Failed(error)) => {
                    let _ = send_control(link, &Control::Cancel { reason: error.peer_reason() }).await;
                    link.flush(FLUSH_LIMIT).await;
                    return Err(error);
                }
                None => reading = false,
            },
        }
    }
}

/// Reads every file from `from` on once, hashing as it goes. Runs on a blocking thread.
fn read_all(sources: &Sources, from: From, chunk: usize, items: &mpsc::Sender<ReadItem>) {
    let fail = |error: TransferError| {
        let _ = items.blocking_send(ReadItem::Failed(error));
    };
    let entries = &sources.manifest.files;
    for (index, entry) in entries.iter().enumerate().skip(from.index as usize) {
        let shown = super::names::escape_for_terminal(&entry.name);
        let changed = || TransferError::SourceChanged(shown.clone());
        let mut file = match source::open(sources, index) {
            Ok(file) => file,
            Err(OpenError::Changed) => return fail(changed()),
            Err(OpenError::Io(e)) => {
                return fail(TransferError::io(format!("cannot read {shown}"), e));
            }
        };
        // A file replaced, truncated or rewritten since the offer would not match it.
        let meta = file.metadata().ok();
        if meta.as_ref().map(|m| m.len()) != Some(entry.size)
            || meta.as_ref().and_then(super::store::mtime_seconds) != entry.mtime
        {
            return fail(changed());
        }
        let mut hasher = Sha256::new();
        let mut offset = 0;
        if index == from.index as usize && from.offset > 0 {
            // The receiver holds this prefix: check it is still what the file holds, and
            // take the hash state over it, in one read.
            match hash_prefix(&mut file, from.offset, &mut hasher) {
                Ok(true) => {}
                Ok(false) => return fail(changed()),
                Err(e) => return fail(TransferError::io(format!("cannot read {shown}"), e)),
            }
            if from.prefix.as_deref() != Some(hex_digest(&hasher.clone().finalize()).as_str()) {
                return fail(changed());
            }
            offset = from.offset;
        }
        let index = index as u32;
        if items
            .blocking_send(ReadItem::Start { index, offset })
            .is_err()
        {
            return;
        }
        let mut left = entry.size - offset;
        while left > 0 {
            let want = left.min(chunk as u64) as usize;
            let mut chunk = BytesMut::with_capacity(want);
            chunk.resize(want, 0);
            match read_full(&mut file, &mut chunk) {
                Ok(n) if n == want => {}
                Ok(_) => return fail(changed()),
                Err(e) => return fail(TransferError::io(format!("cannot read {shown}"), e)),
            }
            hasher.update(&chunk);
            left -= want as u64;
            if items.blocking_send(ReadItem::Chunk(chunk)).is_err() {
                return;
            }
        }
        // A file that grew since it was announced would be sent truncated: refuse instead.
        let mut probe = [0u8; 1];
        if matches!(file.read(&mut probe), Ok(n) if n > 0) {
            return fail(changed());
        }
        let sha256 = hex_digest(&hasher.finalize());
        if items
            .blocking_send(ReadItem::End { index, sha256 })
            .is_err()
        {
            return;
        }
    }
}

/// Hashes the first `len` bytes of `file` into `hasher`; false if the file is shorter.
fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 1024 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        if read_full(file, &mut buf[..want])? != want {
            return Ok(false);
        }
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(true)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub(super) async fn send_control(link: &dyn Link, message: &Control) -> Result<(), TransferError> {
    link.send_text(message.encode())
        .await
        .map_err(|_| TransferError::PeerGone)
}

/// Decodes the next message as control; binary or a closed channel is an error here.
pub(super) fn control(incoming: Option<Incoming>) -> Result<Control, TransferError> {
    match incoming {
        Some(Incoming::Text(text)) => Control::decode(&text)
            .map_err(|e| TransferError::Protocol(super::names::peer_text(&e.to_string()))),
        Some(Incoming::Binary(_)) => {
            Err(TransferError::Protocol("unexpected binary message".into()))
        }
        None => Err(TransferError::PeerGone),
    }
}

pub(super) fn unexpected(message: &Control) -> TransferError {
    TransferError::Protocol(format!("unexpected {} message", message.kind()))
}

/// Tells the peer we stop, waits briefly for that to arrive, and returns `Cancelled`.
pub(super) async fn cancel_peer(link: &dyn Link, reason: &str) -> TransferError {
    let _ = send_control(
        link,
        &Control::Cancel {
            reason: reason.to_owned(),
        },
    )
    .await;
    link.flush(FLUSH_LIMIT).await;
    TransferError::Cancelled
}
