//! The receiver's filesystem edge: partial files, publishing under a free name without
//! ever replacing an existing file, and free-space checks. Blocking I/O; callers run it on
//! a blocking thread.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime};

use super::names::numbered_name;

/// Attempts at a free name before giving up (a directory with this many copies is odd).
const MAX_NAME_ATTEMPTS: u32 = 10_000;

/// Creates the partial file at `path` afresh, with any folders above it inside the job's
/// partial directory. The path carries the job's random tag, so a file already there is a
/// leftover of this same job: it is replaced. `O_EXCL` and `O_NOFOLLOW` mean a planted
/// symlink is never followed.
pub fn create_partial(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a partial file to continue it after its first `offset` bytes.
pub fn reopen_partial(path: &Path, offset: u64) -> io::Result<File> {
    use std::io::Seek;
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
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
pub fn set_folder_time(path: &Path, mtime: Option<i64>) -> io::Result<()> {
    let Some(time) = mtime.and_then(system_time) else {
        return Ok(());
    };
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    handle.set_modified(time)
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

/// Removes a partial top-level entry (a file or a whole partial folder).
pub fn remove_partial(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renames the verified `partial` to `name`, or `name (1)`, ... whichever is free.
/// Never replaces an existing file, even one created concurrently.
pub fn publish(dir: &Path, partial: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..MAX_NAME_ATTEMPTS {
        let target = dir.join(numbered_name(name, n));
        match rename_noreplace(partial, &target) {
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

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // Filesystems without RENAME_NOREPLACE: a hard link also refuses to replace.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(error),
    }
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
        let part = dir.path().join("a.txt.t.p2pd-part");
        create_partial(&part).unwrap();
        std::fs::write(&part, b"new").unwrap();
        let saved = publish(dir.path(), &part, "a.txt").unwrap();
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
        create_partial(&part).unwrap();
        assert!(!victim.exists());
        assert!(part.symlink_metadata().unwrap().is_file());
        std::fs::remove_file(&part).unwrap();
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        assert!(reopen_partial(&part, 0).is_err());
        assert!(!victim.exists());
    }

    #[test]
    fn free_space_reads_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert!(free_space(&dir.path().join("missing")).is_err());
    }
}
