//! What a send request offers: its files (collected off the async threads) or its
//! message (checked), and the file list a job shows.

use std::path::PathBuf;

use super::failure;
use crate::ipc::messages::{ErrorKind, Failure, FileInfo};
use crate::terminal::error_line;
use crate::transfer::source;
use crate::transfer::wire::Manifest;

/// A `--text` message the daemon will send: something to show, short enough, and alone.
fn check_text(text: &str, paths: &[PathBuf]) -> Result<(), Failure> {
    let max = crate::transfer::wire::MAX_TEXT_BYTES;
    if text.trim().is_empty() {
        return Err(failure(
            ErrorKind::BadRequest,
            "the text is empty: give the message to send, like p2p send --text \"see you at 8\"",
        ));
    }
    if text.len() > max {
        return Err(failure(
            ErrorKind::BadRequest,
            format!(
                "the text is {} bytes, more than {max}: send a longer message as a file",
                text.len()
            ),
        ));
    }
    if !paths.is_empty() {
        return Err(failure(
            ErrorKind::BadRequest,
            "a text message is sent on its own: send the files in another p2p send",
        ));
    }
    Ok(())
}

/// Opens every file to send (or checks the text): nothing is sent from a path that fails.
pub(in crate::daemon) async fn collect(
    paths: Vec<PathBuf>,
    text: Option<&str>,
) -> Result<source::Sources, Failure> {
    match text {
        Some(text) => {
            check_text(text, &paths)?;
            Ok(source::Sources::default())
        }
        None => tokio::task::spawn_blocking(move || source::collect(&paths))
            .await
            .map_err(|_| failure(ErrorKind::Io, "opening the files failed"))?
            .map_err(|e| failure(ErrorKind::BadRequest, error_line(&e))),
    }
}

/// What a send job shows of its files before any is verified.
pub(in crate::daemon) fn file_infos(manifest: &Manifest) -> Vec<FileInfo> {
    manifest
        .files
        .iter()
        .map(|s| FileInfo {
            name: s.name.clone(),
            size: s.size,
            verified: false,
            saved_as: None,
        })
        .collect()
}
