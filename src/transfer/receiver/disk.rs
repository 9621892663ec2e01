//! The receiver's disk side: the writer thread (partials, checkpoints, the journal), the
//! batch publisher that gives verified files their names, and crash recovery.

use super::*;

/// Everything the disk side needs to know about the job.
pub(super) struct Disk {
    /// The download directory: every file operation goes beneath this handle.
    pub(super) root: Root,
    pub(super) layout: Layout,
    pub(super) manifest: Manifest,
    /// The job's state directory, for a durable job.
    pub(super) journal: Option<PathBuf>,
}

/// The file being written. Left on disk if the job stops: a durable job resumes from it,
/// and the job's end removes it otherwise (see [`discard`]).
pub(super) struct Partial {
    pub(super) file: File,
    pub(super) hasher: Sha256,
    /// Present in a durable job: the prefix digests for the resume log.
    pub(super) blocks: Option<BlockHasher>,
}

/// A request to make a partial durable up to some point and then log its block hashes.
pub(super) struct Checkpoint {
    pub(super) file: File,
    pub(super) log: PathBuf,
    pub(super) hashes: Vec<[u8; 32]>,
}

/// The disk side: a writer thread (this one), a publisher thread and, for a durable job, a
/// checkpoint thread. The writer creates, writes and verifies one file at a time; the
/// publisher makes verified files durable and names them in batches, and the checkpointer
/// flushes large files and logs their blocks, so neither flush stops the writer.
pub(super) fn write_all(
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
pub(super) fn write_files(
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
pub(super) fn publish_all(
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
pub(super) const VERIFIED_QUEUE: usize = 64;
/// Most verified files waiting to be published together (each holds a descriptor).
pub(super) const BATCH_FILES: usize = 256;
/// Longest a verified file waits for others to share its flush.
pub(super) const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Most verified bytes waiting to be published together.
pub(super) const BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// Verified partial files waiting for one flush to disk and their final names.
#[derive(Default)]
pub(super) struct Batch {
    /// Index of the first file not yet published.
    pub(super) first: u32,
    pub(super) files: Vec<(u32, Partial)>,
    pub(super) bytes: u64,
    /// When the oldest waiting file was verified.
    pub(super) since: Option<Instant>,
}

/// Makes a batch of verified files durable, logs it, then names them, then makes the names
/// durable: the batch's files flushed together on a few threads, and one directory `fsync`
/// instead of one per file. A name never points at data that is not on
/// disk, and the log always knows which partials may still need their name.
pub(super) type Published = (Vec<(u32, Option<PathBuf>)>, Vec<PathBuf>);

pub(super) fn publish_batch(batch: &mut Batch, disk: &Disk) -> Result<Published, TransferError> {
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
pub(super) fn publish_file(disk: &Disk, index: u32) -> Result<Option<PathBuf>, TransferError> {
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
pub(super) fn publish_folders(
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
pub(super) fn recover(
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

pub(super) fn publish_file_at(
    root: &Root,
    layout: &Layout,
    index: u32,
) -> Result<(), TransferError> {
    store::publish(
        root,
        &layout.partial_file(root.path(), index as usize),
        layout.top_name_of(index as usize),
    )
    .map(|_| ())
    .map_err(|e| TransferError::io("cannot give the received file its name", e))
}
