//! Filesystem operations confined to the download directory: every path below it is walked
//! one component at a time from the directory's handle with `O_NOFOLLOW`, so a symlink
//! planted in any component (by another local user who can write there, or left from an
//! earlier run) is refused instead of followed out of the directory. Blocking I/O.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The download directory, opened once; everything else is reached from this handle.
pub struct Root {
    fd: OwnedFd,
    dir: PathBuf,
}

/// A directory below the root and one name inside it (the last component of a path).
pub struct Entry {
    parent: OwnedFd,
    name: CString,
}

impl Root {
    /// Opens the download directory itself. It is the user's choice, so a symlink there is
    /// followed; nothing below it is.
    pub fn open(dir: &Path) -> io::Result<Root> {
        let path = cstring(dir.as_os_str().as_bytes())?;
        let fd = openat(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Root {
            fd,
            dir: dir.to_owned(),
        })
    }

    /// Makes the directory's entries (new names, renames) durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: the handle is open for as long as `self`.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The download directory's path, as given to [`Root::open`].
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The parent directory of `path` (which must lie below the download directory, joined
    /// to the path it was opened from) and its last name. With `create`, missing folders on
    /// the way are made (mode 0777 less the umask).
    pub fn entry(&self, path: &Path, create: bool) -> io::Result<Entry> {
        let names = relative_names(&self.dir, path)?;
        let Some((last, folders)) = names.split_last() else {
            return Err(invalid("the download directory itself is not a file"));
        };
        let mut parent = self.fd.try_clone()?;
        for name in folders {
            parent = match open_dir_at(&parent, name) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    match mkdir_at(&parent, name) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                        _ => {}
                    }
                    open_dir_at(&parent, name)?
                }
                other => other?,
            };
        }
        Ok(Entry {
            parent,
            name: last.clone(),
        })
    }

    /// Makes the folder `path` and any missing folders above it, following no symlink.
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let entry = self.entry(path, true)?;
        match mkdir_at(&entry.parent, &entry.name) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => entry.open_dir().map(drop),
        }
    }
}

impl Entry {
    /// A new file, replacing whatever non-directory was at this name (never through it).
    pub fn create_replacing(&self) -> io::Result<File> {
        match self.unlink(0) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let fd = openat(
            self.parent.as_raw_fd(),
            &self.name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o666,
        )?;
        Ok(File::from(fd))
    }

    /// The existing regular file at this name, for writing (a symlink is refused).
    pub fn open_write(&self) -> io::Result<File> {
        let fd = openat(
            self.parent.as_raw_fd(),
            &self.name,
            libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(invalid("not a regular file"));
        }
        Ok(file)
    }

    /// The existing directory at this name (a symlink is refused).
    pub fn open_dir(&self) -> io::Result<File> {
        open_dir_at(&self.parent, &self.name).map(File::from)
    }

    /// What is at this name without following a symlink, or None if nothing is.
    pub fn kind(&self) -> io::Result<Option<Kind>> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: the name is NUL-terminated; `stat` is written before it is read.
        let rc = unsafe {
            libc::fstatat(
                self.parent.as_raw_fd(),
                self.name.as_ptr(),
                stat.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(error),
            };
        }
        // SAFETY: fstatat returned 0, so it filled `stat`.
        let mode = unsafe { stat.assume_init() }.st_mode & libc::S_IFMT;
        Ok(Some(match mode {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            _ => Kind::Other,
        }))
    }

    /// Removes what is at this name: a file or symlink itself, a folder with everything in
    /// it (walked by handle, never through a symlink). Nothing there is not an error.
    pub fn remove_all(&self) -> io::Result<()> {
        match self.kind()? {
            None => Ok(()),
            Some(Kind::Dir) => {
                remove_tree(&self.open_dir()?)?;
                self.unlink(libc::AT_REMOVEDIR)
            }
            Some(_) => self.unlink(0),
        }
    }

    /// Renames this entry to `to` unless something is already there (never replaces).
    pub fn rename_noreplace(&self, to: &Entry) -> io::Result<()> {
        // The system call itself, not libc's wrapper: musl before 1.2.5 (Debian bookworm's
        // 1.2.3, the static build's) has no renameat2(), and the kernel has had it since 3.15.
        // SAFETY: both names are NUL-terminated and both directory handles are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.parent.as_raw_fd(),
                self.name.as_ptr(),
                to.parent.as_raw_fd(),
                to.name.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // Filesystems without RENAME_NOREPLACE: a hard link also refuses to replace
            // (files only; a folder there fails with the filesystem's own error).
            Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                // SAFETY: as above; flags 0 means linkat does not follow a symlink.
                let rc = unsafe {
                    libc::linkat(
                        self.parent.as_raw_fd(),
                        self.name.as_ptr(),
                        to.parent.as_raw_fd(),
                        to.name.as_ptr(),
                        0,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                self.unlink(0)
            }
            _ => Err(error),
        }
    }

    /// The same folder with another last name.
    pub fn sibling(&self, name: &str) -> io::Result<Entry> {
        Ok(Entry {
            parent: self.parent.try_clone()?,
            name: cstring(name.as_bytes())?,
        })
    }

    fn unlink(&self, flags: libc::c_int) -> io::Result<()> {
        unlink_at(&self.parent, &self.name, flags)
    }
}

/// What a name refers to, symlinks not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
}

/// Empties the directory `dir`, depth first, by handle.
fn remove_tree(dir: &File) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    let listing = std::fs::read_dir(format!("/proc/self/fd/{fd}"))?;
    for item in listing {
        let item = item?;
        let name = cstring(item.file_name().as_bytes())?;
        if item.file_type()?.is_dir() {
            let child = open_dir_at(dir, &name)?;
            remove_tree(&File::from(child))?;
            unlink_at_raw(fd, &name, libc::AT_REMOVEDIR)?;
        } else {
            unlink_at_raw(fd, &name, 0)?;
        }
    }
    Ok(())
}

/// The names of `path` below `root`; anything else (`..`, a path outside) is refused.
fn relative_names(root: &Path, path: &Path) -> io::Result<Vec<CString>> {
    let rest = path
        .strip_prefix(root)
        .map_err(|_| invalid("a path outside the download directory"))?;
    rest.components()
        .map(|component| match component {
            Component::Normal(name) => cstring(name.as_bytes()),
            _ => Err(invalid("a path that leaves the download directory")),
        })
        .collect()
}

fn open_dir_at(parent: &impl AsRawFd, name: &CString) -> io::Result<OwnedFd> {
    openat(
        parent.as_raw_fd(),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

fn mkdir_at(parent: &OwnedFd, name: &CString) -> io::Result<()> {
    // SAFETY: the name is NUL-terminated and the handle is open.
    let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o777) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unlink_at(parent: &OwnedFd, name: &CString, flags: libc::c_int) -> io::Result<()> {
    unlink_at_raw(parent.as_raw_fd(), name, flags)
}

fn unlink_at_raw(parent: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: the name is NUL-terminated and the caller holds `parent` open.
    let rc = unsafe { libc::unlinkat(parent, name.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn openat(
    parent: libc::c_int,
    name: &CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: the name is NUL-terminated; the caller holds `parent` open (or AT_FDCWD).
    let fd = unsafe {
        libc::openat(
            parent,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| invalid("a name with a NUL byte"))
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A download directory and a directory outside it that a planted symlink points to.
    fn planted() -> (tempfile::TempDir, tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("link")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, outside, root)
    }

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn creating_below_a_symlinked_folder_is_refused() {
        let (dir, outside, root) = planted();
        let path = dir.path().join("link/sub/x.part");
        assert!(root.entry(&path, true).is_err());
        assert!(root.create_dir_all(&dir.path().join("link/sub")).is_err());
        assert!(empty(outside.path()));
    }

    #[test]
    fn a_symlink_in_the_middle_of_a_path_is_refused_for_every_operation() {
        let (dir, outside, root) = planted();
        std::fs::write(outside.path().join("f"), b"secret").unwrap();
        std::fs::create_dir(outside.path().join("d")).unwrap();
        let file = root
            .entry(&dir.path().join("link/f"), false)
            .map(|e| e.open_write());
        assert!(!matches!(file, Ok(Ok(_))));
        assert!(root.entry(&dir.path().join("link/d"), false).is_err());
        assert_eq!(std::fs::read(outside.path().join("f")).unwrap(), b"secret");
    }

    #[test]
    fn a_symlink_as_the_last_name_is_replaced_or_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        symlink(&victim, dir.path().join("x")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let entry = root.entry(&dir.path().join("x"), false).unwrap();
        assert_eq!(entry.kind().unwrap(), Some(Kind::Other));
        assert!(entry.open_write().is_err());
        assert!(entry.open_dir().is_err());
        entry.create_replacing().unwrap();
        assert_eq!(entry.kind().unwrap(), Some(Kind::File));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn removing_a_folder_removes_a_symlink_inside_it_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"keep").unwrap();
        let top = dir.path().join("top.t.p2pd-part");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::write(top.join("a/b/f"), b"x").unwrap();
        symlink(outside.path(), top.join("a/out")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.entry(&top, false).unwrap().remove_all().unwrap();
        assert!(!top.exists());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn rename_never_replaces_and_folders_are_made_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.create_dir_all(&dir.path().join("p/q/r")).unwrap();
        assert!(dir.path().join("p/q/r").is_dir());
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        std::fs::write(dir.path().join("b"), b"b").unwrap();
        let a = root.entry(&dir.path().join("a"), false).unwrap();
        let b = a.sibling("b").unwrap();
        let error = a.rename_noreplace(&b).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"b");
        assert!(root.entry(Path::new("/etc/passwd"), false).is_err());
        assert!(root.entry(&dir.path().join("../x"), false).is_err());
    }
}
