//! The receiver's filesystem edge: partial files, publishing under a free name without
//! ever replacing an existing file, and free-space checks. Blocking I/O; callers run it on
//! a blocking thread.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use super::beneath::Root;
use super::names::numbered_name;

/// Attempts at a free name before giving up (a directory with this many copies is odd).
const MAX_NAME_ATTEMPTS: u32 = 10_000;

/// Creates the partial file at `path` afresh, with any folders above it inside the job's
/// partial directory, all beneath the download directory's handle: a symlink planted in
/// any component is refused, never followed. The path carries the job's random tag, so a
/// file already there is a leftover of this same job: it is replaced.
pub fn create_partial(root: &Root, path: &Path) -> io::Result<File> {
    root.entry(path, true)?.create_replacing()
}

/// Opens a partial file to continue it after its first `offset` bytes.
pub fn reopen_partial(root: &Root, path: &Path, offset: u64) -> io::Result<File> {
    use std::io::Seek;
    let mut file = root.entry(path, false)?.open_write()?;
    file.set_len(offset)?;
    file.seek(io::SeekFrom::Start(offset))?;
    Ok(file)
}

/// Gives a received file the sender's modification time and, if it was executable there,
/// execute permission wherever it already has read permission (so the umask still rules).
pub fn apply_metadata(file: &File, mtime: Option<i64>, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if executable {
        let mut permissions = file.metadata()?.permissions();
        let mode = permissions.mode();
        permissions.set_mode(mode | ((mode & 0o444) >> 2));
        file.set_permissions(permissions)?;
    }
    if let Some(time) = mtime.and_then(system_time) {
        file.set_modified(time)?;
    }
    Ok(())
}

/// Sets a folder's modification time (after everything inside it is written).
pub fn set_folder_time(root: &Root, path: &Path, mtime: Option<i64>) -> io::Result<()> {
    let Some(time) = mtime.and_then(system_time) else {
        return Ok(());
    };
    root.entry(path, false)?.open_dir()?.set_modified(time)
}

fn system_time(seconds: i64) -> Option<SystemTime> {
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds as u64))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(seconds.unsigned_abs()))
    }
}

/// Seconds since the epoch of a file's modification time, as offers carry it.
pub fn mtime_seconds(meta: &std::fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.mtime())
}

/// Removes a partial entry (a file or a whole partial folder; a symlink itself, never
/// what it points to).
pub fn remove_partial(root: &Root, path: &Path) -> io::Result<()> {
    root.entry(path, false)?.remove_all()
}

/// Whether something (a symlink included, not followed) is at `path`.
pub fn exists(root: &Root, path: &Path) -> io::Result<bool> {
    match root.entry(path, false) {
        Ok(entry) => Ok(entry.kind()?.is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames the verified `partial` to `name`, or `name (1)`, ... whichever is free, in the
/// download directory. Never replaces an existing file, even one created concurrently.
pub fn publish(root: &Root, partial: &Path, name: &str) -> io::Result<PathBuf> {
    let from = root.entry(partial, false)?;
    for n in 0..MAX_NAME_ATTEMPTS {
        let target = root.path().join(numbered_name(name, n));
        match from.rename_noreplace(&root.entry(&target, false)?) {
            Ok(()) => return Ok(target),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free file name",
    ))
}

/// Threads that flush one batch's files at once: the device sees several flushes queued
/// together, as one `syncfs` would give it, without flushing every other program's data.
pub const SYNC_THREADS: usize = 4;

/// Makes each file's data and metadata durable (`fsync` per file, up to [`SYNC_THREADS`]
/// at a time). Only these files: `syncfs` would flush the whole filesystem.
pub fn sync_files(files: &[&File]) -> io::Result<()> {
    if files.len() <= 1 {
        return files.iter().try_for_each(|f| f.sync_all());
    }
    let per_thread = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|f| f.sync_all())))
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a flush thread panicked")))
        })
    })
}

/// Bytes an unprivileged user may still write on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated; `stat` is written by the call before we read it.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets; on 64-bit Linux both are already u64.
    #[allow(clippy::unnecessary_cast)]
    let free = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_never_replaces_and_picks_free_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"old").unwrap();
        let root = Root::open(dir.path()).unwrap();
        let part = dir.path().join("a.txt.t.p2pd-part");
        create_partial(&root, &part).unwrap();
        std::fs::write(&part, b"new").unwrap();
        let saved = publish(&root, &part, "a.txt").unwrap();
        assert_eq!(saved, dir.path().join("a (1).txt"));
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"old");
        assert_eq!(std::fs::read(&saved).unwrap(), b"new");
        assert!(!part.exists());
    }

    #[test]
    fn partials_do_not_follow_planted_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        let part = dir.path().join("x.t.p2pd-part");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        let root = Root::open(dir.path()).unwrap();
        create_partial(&root, &part).unwrap();
        assert!(!victim.exists());
        assert!(part.symlink_metadata().unwrap().is_file());
        std::fs::remove_file(&part).unwrap();
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        assert!(reopen_partial(&root, &part, 0).is_err());
        assert!(!victim.exists());
    }

    #[test]
    fn partials_and_folders_are_never_made_through_a_symlinked_folder() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let top = dir.path().join("tree.t.p2pd-part");
        std::fs::create_dir(&top).unwrap();
        std::os::unix::fs::symlink(outside.path(), top.join("sub")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert!(create_partial(&root, &top.join("sub/deeper/x.bin")).is_err());
        assert!(create_partial(&root, &top.join("sub/x.bin")).is_err());
        assert!(set_folder_time(&root, &top.join("sub"), Some(0)).is_err());
        assert!(publish(&root, &top.join("sub/x.bin"), "x.bin").is_err());
        remove_partial(&root, &top).unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(outside.path().exists());
    }

    #[test]
    fn free_space_reads_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert!(free_space(&dir.path().join("missing")).is_err());
    }
}
