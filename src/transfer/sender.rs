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
use super::wire::{CHUNK_BYTES, Control, FileEntry};
use super::{FLUSH_LIMIT, Observer, TransferError, hex_digest};

/// Chunks read ahead of the channel. Small: the channel's own buffer is the real queue.
const READ_AHEAD_CHUNKS: usize = 8;

/// A file opened for sending, with the name and size announced to the receiver.
#[derive(Debug)]
pub struct SourceFile {
    pub name: String,
    pub size: u64,
    /// Opened only when its turn comes, so thousands of files need one descriptor at a time.
    pub path: std::path::PathBuf,
}

enum ReadItem {
    Start(u32),
    Chunk(BytesMut),
    End { index: u32, sha256: String },
    Failed(TransferError),
}

/// Runs the whole sending side over `link`. Returns once every file is verified.
pub async fn send(
    link: &dyn Link,
    files: Vec<SourceFile>,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let entries: Vec<FileEntry> = files
        .iter()
        .map(|f| FileEntry {
            name: f.name.clone(),
            size: f.size,
        })
        .collect();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    for part in Control::offer_parts(&entries) {
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
    debug!(files = files.len(), total, "offer accepted");

    let (items_tx, mut items) = mpsc::channel(READ_AHEAD_CHUNKS);
    // Never larger than the peer accepts; 64 KiB otherwise (batched sends need equal runs).
    let chunk = link.max_message_bytes().clamp(1, CHUNK_BYTES);
    let reader = tokio::task::spawn_blocking(move || read_all(files, chunk, &items_tx));
    let result = stream(link, &mut items, &entries, total, observer, cancel).await;
    // Closing the queue makes a reader blocked on a full queue give up.
    drop(items);
    let _ = reader.await;
    result
}

async fn stream(
    link: &dyn Link,
    items: &mut mpsc::Receiver<ReadItem>,
    entries: &[FileEntry],
    total: u64,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let mut pending: Option<BytesMut> = None;
    let mut reading = true;
    let mut verified = 0usize;
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
                        link.flush(FLUSH_LIMIT).await;
                        return Ok(());
                    }
                }
                Control::FileFailed { index, reason } => {
                    let name = entries.get(index as usize).map(|e| e.name.as_str()).unwrap_or("a file");
                    return Err(TransferError::ReceiverFailed {
                        name: super::names::escape_for_terminal(name),
                        // The peer's words: escaped, and kept to one short line.
                        reason: super::names::peer_text(&reason),
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
                Some(ReadItem::Start(index)) => send_control(link, &Control::FileStart { index }).await?,
                Some(ReadItem::Chunk(chunk)) => pending = Some(chunk),
                Some(ReadItem::End { index, sha256 }) => send_control(link, &Control::FileEnd { index, sha256 }).await?,
                Some(ReadItem::Failed(error)) => {
                    let _ = send_control(link, &Control::Cancel { reason: error.to_string() }).await;
                    link.flush(FLUSH_LIMIT).await;
                    return Err(error);
                }
                None => reading = false,
            },
        }
    }
}

/// Reads every file once, hashing as it goes. Runs on a blocking thread.
fn read_all(files: Vec<SourceFile>, chunk: usize, items: &mpsc::Sender<ReadItem>) {
    for (index, source) in files.into_iter().enumerate() {
        let index = index as u32;
        let shown = super::names::escape_for_terminal(&source.name);
        let mut file = match File::open(&source.path) {
            Ok(file) => file,
            Err(e) => {
                let _ = items.blocking_send(ReadItem::Failed(TransferError::io(
                    format!("cannot read {shown}"),
                    e,
                )));
                return;
            }
        };
        // A file that was replaced or truncated since the offer would not match it.
        if file.metadata().map(|m| m.len()).ok() != Some(source.size) {
            let _ = items.blocking_send(ReadItem::Failed(TransferError::SourceChanged(shown)));
            return;
        }
        if items.blocking_send(ReadItem::Start(index)).is_err() {
            return;
        }
        let mut hasher = Sha256::new();
        let mut left = source.size;
        while left > 0 {
            let want = left.min(chunk as u64) as usize;
            let mut chunk = BytesMut::zeroed(want);
            match read_full(&mut file, &mut chunk) {
                Ok(n) if n == want => {}
                Ok(_) => {
                    let _ = items.blocking_send(ReadItem::Failed(TransferError::SourceChanged(
                        super::names::escape_for_terminal(&source.name),
                    )));
                    return;
                }
                Err(e) => {
                    let _ = items.blocking_send(ReadItem::Failed(TransferError::io(
                        format!(
                            "cannot read {}",
                            super::names::escape_for_terminal(&source.name)
                        ),
                        e,
                    )));
                    return;
                }
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
            let _ = items.blocking_send(ReadItem::Failed(TransferError::SourceChanged(
                super::names::escape_for_terminal(&source.name),
            )));
            return;
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
        Some(Incoming::Text(text)) => {
            Control::decode(&text).map_err(|e| TransferError::Protocol(e.to_string()))
        }
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
