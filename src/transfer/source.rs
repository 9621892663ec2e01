//! The sender's filesystem edge: turns the paths a user gave into an offer, and later opens
//! each offered file again for reading. Folders are walked without following symlinks;
//! symlinks and special files are left out and listed. Blocking I/O.
//!
//! Between the offer and the read, anyone who can write in a sent folder can swap a file for
//! a symlink or a FIFO. [`open`] therefore walks down from the folder's own directory handle
//! one component at a time with `O_NOFOLLOW`, opens with `O_NONBLOCK` (a FIFO cannot block),
//! and accepts only the regular file whose device and inode were recorded in the offer.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::{self, NameError};
use super::store::mtime_seconds;
use super::wire::{FileEntry, FolderEntry, Manifest};

/// An offer and, for each file in it, where the sender reads it from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub manifest: Manifest,
    pub paths: Vec<PathBuf>,
    /// The identity of each file when it was offered; empty for a job recorded before
    /// identities were kept (then size and time are all that is checked).
    pub ids: Vec<FileId>,
}

/// Which file an offer meant: a file replaced by another (even one of the same size and
/// time) has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Why an offered file could not be opened again for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It is no longer the regular file that was offered (replaced, or now a link, a FIFO
    /// or a device).
    #[error("it is no longer the file that was offered")]
    Changed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("nothing to send: give one or more files or folders")]
    Nothing,
    #[error("cannot send {path}: {why}")]
    Unusable { path: String, why: String },
    #[error("two things to send are named {0}: rename one or send them separately")]
    SameName(String),
    #[error("cannot send {path}")]
    BadName {
        path: String,
        #[source]
        source: NameError,
    },
    #[error("too many files: more than {0} in one transfer")]
    TooMany(usize),
}

/// Builds the offer for `paths`, each becoming one top-level entry at the receiver.
pub fn collect(paths: &[PathBuf]) -> Result<Sources, SourceError> {
    if paths.is_empty() {
        return Err(SourceError::Nothing);
    }
    let mut sources = Sources::default();
    let mut tops = HashSet::with_capacity(paths.len());
    for path in paths {
        let shown = names::escape_for_terminal(&path.to_string_lossy());
        let meta = std::fs::metadata(path).map_err(|e| unusable(&shown, &e))?;
        let name = utf8_name(path, &shown)?;
        names::validate_name(&name).map_err(|source| SourceError::BadName {
            path: shown.clone(),
            source,
        })?;
        if !tops.insert(name.to_lowercase()) {
            return Err(SourceError::SameName(names::escape_for_terminal(&name)));
        }
        if meta.is_dir() {
            walk(path, &name, &meta, &mut sources)?;
        } else if meta.is_file() {
            // Fail now, not mid-transfer, on a file we may not read; a FIFO swapped in since
            // the `metadata` call must not block the daemon.
            let file = open_nonblocking(path).map_err(|e| unusable(&shown, &e))?;
            let meta = file.metadata().map_err(|e| unusable(&shown, &e))?;
            if !meta.is_file() {
                return Err(SourceError::Unusable {
                    path: shown,
                    why: "not a regular file or folder".into(),
                });
            }
            add_file(&mut sources, name, path.clone(), &meta);
        } else {
            return Err(SourceError::Unusable {
                path: shown,
                why: "not a regular file or folder".into(),
            });
        }
        if sources.manifest.files.len() + sources.manifest.folders.len() > names::MAX_FILES {
            return Err(SourceError::TooMany(names::MAX_FILES));
        }
    }
    Ok(sources)
}

fn add_file(sources: &mut Sources, name: String, path: PathBuf, meta: &Metadata) {
    sources.manifest.files.push(FileEntry {
        name,
        size: meta.len(),
        mtime: mtime_seconds(meta),
        executable: meta.permissions().mode() & 0o111 != 0,
    });
    sources.paths.push(path);
    sources.ids.push(FileId::of(meta));
}

/// Opens offered file `index` for reading, beneath the directory handle of the folder it
/// was found in, and checks it is still the regular file the offer named.
pub fn open(sources: &Sources, index: usize) -> Result<File, OpenError> {
    let (Some(path), Some(entry)) = (sources.paths.get(index), sources.manifest.files.get(index))
    else {
        return Err(OpenError::Changed);
    };
    // The offered name is `TOP/REL/...`: TOP is the argument the user gave, the rest was
    // found by the walk and may have been swapped since.
    let beneath: Vec<&str> = entry.name.split('/').skip(1).collect();
    let file = if beneath.is_empty() {
        open_nonblocking(path)?
    } else {
        let root = path
            .ancestors()
            .nth(beneath.len())
            .ok_or(OpenError::Changed)?;
        let mut dir = open_dir(root)?;
        for component in &beneath[..beneath.len() - 1] {
            dir = openat(&dir, component, libc::O_DIRECTORY)?;
        }
        let last = beneath[beneath.len() - 1];
        File::from(openat(&dir, last, libc::O_NONBLOCK | libc::O_NOCTTY)?)
    };
    let meta = file.metadata()?;
    let same = sources
        .ids
        .get(index)
        .is_none_or(|id| *id == FileId::of(&meta));
    if !meta.is_file() || !same {
        return Err(OpenError::Changed);
    }
    Ok(file)
}

fn open_nonblocking(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(dir))
}

/// Opens `name` (one component) in `dir` read-only, never following a symlink.
fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> Result<OwnedFd, OpenError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(OpenError::Changed);
    }
    let c_name = CString::new(name.as_bytes()).map_err(|_| OpenError::Changed)?;
    // SAFETY: `dir` is an open descriptor and `c_name` a NUL-terminated string, both alive
    // for the call; the returned descriptor is owned by nobody else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags,
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        // ELOOP: a symlink where a file or folder was; ENOTDIR: a file where a folder was.
        return Err(match error.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => OpenError::Changed,
            _ => OpenError::Io(error),
        });
    }
    // SAFETY: `fd` was just returned by openat and is closed only by this OwnedFd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Walks `root` depth first in name order, so the offer (and a resume) is reproducible.
fn walk(
    root: &Path,
    name: &str,
    meta: &Metadata,
    sources: &mut Sources,
) -> Result<(), SourceError> {
    sources.manifest.folders.push(FolderEntry {
        name: name.to_owned(),
        mtime: mtime_seconds(meta),
    });
    let shown = names::escape_for_terminal(&root.to_string_lossy());
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| unusable(&shown, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(&shown, &e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let shown = names::escape_for_terminal(&path.to_string_lossy());
        let child = format!("{name}/{}", utf8_name(&path, &shown)?);
        names::validate_path(&child).map_err(|source| SourceError::BadName {
            path: shown.clone(),
            source,
        })?;
        // Never follows a symlink, so nothing outside the folder is ever sent.
        let meta = std::fs::symlink_metadata(&path).map_err(|e| unusable(&shown, &e))?;
        if meta.is_dir() {
            walk(&path, &child, &meta, sources)?;
        } else if meta.is_file() {
            add_file(sources, child, path, &meta);
        } else {
            sources.manifest.skipped.push(child);
        }
        if sources.manifest.files.len() + sources.manifest.folders.len() > names::MAX_FILES {
            return Err(SourceError::TooMany(names::MAX_FILES));
        }
    }
    Ok(())
}

fn utf8_name(path: &Path, shown: &str) -> Result<String, SourceError> {
    let why = match path.file_name() {
        Some(name) => match name.to_str() {
            Some(name) => return Ok(name.to_owned()),
            None => "its name is not valid UTF-8",
        },
        // `/`, or a path ending in `..`: nothing to name the entry at the receiver.
        None => "it has no name of its own (like / or ..): give a folder by its name",
    };
    Err(SourceError::Unusable {
        path: shown.to_owned(),
        why: why.into(),
    })
}

fn unusable(shown: &str, e: &std::io::Error) -> SourceError {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or folder".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    SourceError::Unusable {
        path: shown.to_owned(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_walked_in_order_and_links_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("tree");
        std::fs::create_dir_all(top.join("b/empty")).unwrap();
        std::fs::write(top.join("b/z.txt"), b"zz").unwrap();
        std::fs::write(top.join("a.sh"), b"#!").unwrap();
        std::fs::set_permissions(top.join("a.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("link")).unwrap();
        let single = root.path().join("one.bin");
        std::fs::write(&single, b"1").unwrap();

        let sources = collect(&[top.clone(), single.clone()]).unwrap();
        let names: Vec<_> = sources
            .manifest
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["tree/a.sh", "tree/b/z.txt", "one.bin"]);
        assert!(sources.manifest.files[0].executable);
        assert!(!sources.manifest.files[1].executable);
        let folders: Vec<_> = sources
            .manifest
            .folders
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(folders, ["tree", "tree/b", "tree/b/empty"]);
        assert_eq!(sources.manifest.skipped, ["tree/link"]);
        assert_eq!(sources.paths[2], single);

        assert!(matches!(
            collect(&[single.clone(), single]),
            Err(SourceError::SameName(_))
        ));
        assert!(matches!(collect(&[]), Err(SourceError::Nothing)));
        assert!(matches!(
            collect(&[root.path().join("missing")]),
            Err(SourceError::Unusable { .. })
        ));
    }
}
