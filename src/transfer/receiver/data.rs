//! The receiver's data loop: chunks into the writer's queue in order, each file's end
//! checked against what was written, until every file is verified.

use super::*;

/// Where the incoming byte stream is within the offer.
pub(super) struct Cursor {
    pub(super) next_index: u32,
    /// Where the next file starts: non-zero only for the first file after a resume.
    pub(super) next_offset: u64,
    /// The file being received and the bytes of it seen so far (from its start).
    pub(super) current: Option<(u32, u64)>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_files(
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
                        Control::Cancel { reason } => return Err(TransferError::PeerCancelled(crate::transfer::names::peer_text(&reason))),
                        other => return Err(protocol(link, &unexpected(&other).to_string()).await),
                    },
                };
                pending = Some(command);
            }
        }
    }
}

pub(super) fn accept_data(
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
