//! What a follower of a job is sent: the per-file lists once, in bounded chunks, then only
//! what changed, then a summary. Pure: the connection feeds it snapshots.
//!
//! A job of 100 000 files with long names and saved paths is tens of MiB as one value;
//! sent whole on every update (or 100 of them in one `List` reply) it exceeded the frame
//! cap. Here no frame grows with the number of files beyond [`CHUNK_BYTES`].

use super::messages::{FileInfo, JobInfo, ServerFrame, VerifiedFile};

/// Rough payload per list frame; one entry may overshoot it (a name is at most 2 KiB and a
/// saved path at most PATH_MAX), so a frame stays far below `MAX_FRAME_BYTES`.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// What one follower has been sent of one job so far.
#[derive(Debug, Default)]
pub struct Sent {
    /// `verified[i]`: the follower knows file `i` is verified. Its length is the length
    /// of the file list the follower holds, or `None` before any list was sent.
    verified: Option<Vec<bool>>,
    skipped: Option<usize>,
    folders: usize,
}

fn file_cost(file: &FileInfo) -> usize {
    32 + file.name.len() + file.saved_as.as_ref().map_or(0, |p| p.as_os_str().len())
}

/// Splits `items` into runs of about `CHUNK_BYTES`, never empty ones (except for an empty
/// list, which is one empty run so the follower learns the list is empty).
fn chunks<T>(items: &[T], cost: impl Fn(&T) -> usize) -> Vec<(usize, &[T])> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, item) in items.iter().enumerate() {
        if bytes > 0 && bytes + cost(item) > CHUNK_BYTES {
            runs.push((start, &items[start..index]));
            start = index;
            bytes = 0;
        }
        bytes += cost(item);
    }
    if start < items.len() || runs.is_empty() {
        runs.push((start, &items[start..]));
    }
    runs
}

impl Sent {
    /// The frames that bring this follower from what it was sent to `info`, ending with
    /// the `Update` summary.
    pub fn frames(&mut self, info: &JobInfo) -> Vec<ServerFrame> {
        let job = info.id;
        let mut frames = Vec::new();
        // The list is set when the offer is known; a resume sets it again, verified prefix
        // and all. A new length, or a file no longer verified, is a new list: send it whole.
        let list_changed = self.verified.as_ref().is_none_or(|known| {
            known.len() != info.files.len()
                || known
                    .iter()
                    .zip(&info.files)
                    .any(|(k, f)| *k && !f.verified)
        });
        if list_changed && (self.verified.is_some() || !info.files.is_empty()) {
            for (first, files) in chunks(&info.files, file_cost) {
                frames.push(ServerFrame::Files {
                    job,
                    first: first as u64,
                    files: files.to_vec(),
                });
            }
            self.verified = Some(info.files.iter().map(|f| f.verified).collect());
        }
        if let Some(known) = self.verified.as_mut() {
            let mut changes = Vec::new();
            let mut bytes = 0;
            for (index, file) in info.files.iter().enumerate() {
                if file.verified && !known[index] {
                    known[index] = true;
                    bytes += file_cost(file);
                    changes.push(VerifiedFile {
                        index: index as u64,
                        saved_as: file.saved_as.clone(),
                    });
                    if bytes >= CHUNK_BYTES {
                        frames.push(ServerFrame::Verified {
                            job,
                            files: std::mem::take(&mut changes),
                        });
                        bytes = 0;
                    }
                }
            }
            if !changes.is_empty() {
                frames.push(ServerFrame::Verified {
                    job,
                    files: changes,
                });
            }
        }
        if self.skipped != Some(info.skipped.len())
            && (self.skipped.is_some() || !info.skipped.is_empty())
        {
            for (first, paths) in chunks(&info.skipped, |p| 16 + p.len()) {
                frames.push(ServerFrame::Skipped {
                    job,
                    first: first as u64,
                    paths: paths.to_vec(),
                });
            }
            self.skipped = Some(info.skipped.len());
        }
        let new_folders = info.saved_folders.get(self.folders..).unwrap_or_default();
        for (_, paths) in chunks(new_folders, |p| 16 + p.as_os_str().len()) {
            if !paths.is_empty() {
                frames.push(ServerFrame::FoldersSaved {
                    job,
                    paths: paths.to_vec(),
                });
            }
        }
        self.folders = info.saved_folders.len();
        frames.push(ServerFrame::Update(info.summary()));
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::codec::encode;

    fn job(files: usize) -> JobInfo {
        JobInfo {
            id: 7,
            files: (0..files)
                .map(|i| FileInfo {
                    name: format!("folder/{i:06}-{}", "n".repeat(180)),
                    size: 1,
                    verified: false,
                    saved_as: None,
                })
                .collect(),
            ..JobInfo::default()
        }
    }

    /// Feeds every frame to a fresh view, as `p2p` does.
    fn replay(view: &mut JobInfo, frames: &[ServerFrame]) -> usize {
        let mut largest = 0;
        for frame in frames {
            largest = largest.max(encode(frame).unwrap().len());
            view.apply(frame);
        }
        largest
    }

    #[test]
    fn a_follower_rebuilds_the_job_from_small_frames() {
        let mut info = job(20_000);
        info.skipped = vec!["folder/link".into()];
        let mut sent = Sent::default();
        let mut view = JobInfo::default();
        let largest = replay(&mut view, &sent.frames(&info));
        assert_eq!(view, info);
        assert!(largest < 2 * CHUNK_BYTES, "largest frame {largest}");

        // Some files verified, a folder saved: only those travel.
        for file in &mut info.files[..500] {
            file.verified = true;
            file.saved_as = Some("/dl/x".into());
        }
        info.saved_folders.push("/dl/folder".into());
        info.bytes_done = 500;
        let frames = sent.frames(&info);
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, ServerFrame::Files { .. } | ServerFrame::Skipped { .. })),
            "lists are sent once"
        );
        replay(&mut view, &frames);
        assert_eq!(view, info);

        // Nothing changed: the summary alone.
        assert_eq!(
            sent.frames(&info),
            vec![ServerFrame::Update(info.summary())]
        );
    }

    #[test]
    fn a_list_that_appears_later_is_sent_then() {
        let mut info = job(0);
        let mut sent = Sent::default();
        assert_eq!(sent.frames(&info).len(), 1);
        info.files = job(3).files;
        info.files[1].verified = true;
        let mut view = JobInfo::default();
        replay(&mut view, &sent.frames(&info));
        assert_eq!(view, info);
        // Set again as a resume does: the follower gets the new list, not a stale one.
        info.files[1].verified = false;
        info.files[0].verified = true;
        replay(&mut view, &sent.frames(&info));
        assert_eq!(view, info);
    }
}
