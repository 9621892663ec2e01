//! The control socket: a private directory, stale-socket recovery, and peer checks.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another p2pd is already running on {0}: stop it first, or pass --socket PATH")]
    InUse(PathBuf),
    #[error(
        "socket directory {path} belongs to another user (uid {owner}), who could replace the socket: remove it, set XDG_RUNTIME_DIR, or pass --socket PATH in a directory of yours"
    )]
    NotOurs { path: PathBuf, owner: u32 },
    #[error(
        "socket directory {path} is writable by other users: make it private (chmod 700 {path}) or pass --socket PATH"
    )]
    Writable { path: PathBuf },
    #[error("cannot take the control socket systemd passed (LISTEN_FDS): check p2pd.socket")]
    Activation(#[source] io::Error),
    #[error("cannot set up the control socket at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the control socket came from, which says who removes it.
#[derive(Debug)]
pub enum Listening {
    /// Bound here at this path: removed when the daemon stops.
    Bound(PathBuf),
    /// Passed by systemd (`p2pd.socket`): it stays, to start the daemon again.
    Activated,
}

impl Listening {
    /// Removes the socket if this daemon made it.
    pub fn release(&self) {
        if let Listening::Bound(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The control socket: the one systemd passed when socket-activated (`LISTEN_FDS`: the
/// unit made it, 0600 in a 0700 directory), else bound at `path` by [`bind`].
pub async fn listen(path: &Path) -> Result<(UnixListener, Listening), SocketError> {
    let passed = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .map_err(SocketError::Activation)?;
    match passed {
        Some(listener) => {
            listener
                .set_nonblocking(true)
                .map_err(SocketError::Activation)?;
            let listener = UnixListener::from_std(listener).map_err(SocketError::Activation)?;
            Ok((listener, Listening::Activated))
        }
        None => Ok((bind(path).await?, Listening::Bound(path.to_owned()))),
    }
}

/// Binds the control socket at `path`: parent directory `0700`, socket `0600`. A socket
/// left by a crashed daemon is replaced only after a connection attempt to it fails.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_dir(dir)?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let listener = UnixListener::bind(path).map_err(|source| match source.kind() {
        // Another daemon won the race between our probe and our bind.
        io::ErrorKind::AddrInUse => SocketError::InUse(path.to_owned()),
        _ => SocketError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    Ok(listener)
}

/// The socket's directory must be ours and private, or a sticky directory owned by root
/// (`/tmp` itself, when `--socket` points straight into it). Anyone else who owns the
/// directory can rename our socket away and bind their own in its place, sticky bit or
/// not, so such a directory is refused rather than used (issue #23).
fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    // A symlink's target is checked below, but whoever owns the link itself can point it
    // elsewhere later.
    let link = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if link.file_type().is_symlink() && !trusted_owner(link.uid()) {
        return Err(SocketError::NotOurs {
            path: dir.to_owned(),
            owner: link.uid(),
        });
    }
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    match check_dir(meta.uid(), meta.mode(), current_uid()) {
        DirCheck::Private => Ok(()),
        DirCheck::Tighten => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir)),
        DirCheck::NotOurs => Err(SocketError::NotOurs {
            path: dir.to_owned(),
            owner: meta.uid(),
        }),
        DirCheck::Writable => Err(SocketError::Writable {
            path: dir.to_owned(),
        }),
    }
}

fn trusted_owner(uid: u32) -> bool {
    uid == current_uid() || uid == 0
}

/// What to do with the socket's directory, given its owner and mode.
#[derive(Debug, PartialEq, Eq)]
enum DirCheck {
    /// Ours and closed to others, or root's shared sticky directory.
    Private,
    /// Ours and readable by others: closed to 0700 before the socket appears.
    Tighten,
    /// Another user's: they could swap the socket.
    NotOurs,
    /// Ours but writable by others, who may already have planted a socket in it.
    Writable,
}

fn check_dir(owner: u32, mode: u32, us: u32) -> DirCheck {
    const STICKY: u32 = 0o1000;
    if owner != us {
        // Root's sticky /tmp: others cannot remove or rename what we create in it.
        return if owner == 0 && mode & STICKY != 0 {
            DirCheck::Private
        } else {
            DirCheck::NotOurs
        };
    }
    if mode & 0o022 != 0 {
        DirCheck::Writable
    } else if mode & 0o055 != 0 {
        DirCheck::Tighten
    } else {
        DirCheck::Private
    }
}

pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Only the daemon's own user, or root, may drive it.
pub fn peer_allowed(stream: &UnixStream) -> bool {
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == current_uid() || cred.uid() == 0,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_private_directory_or_roots_sticky_one_is_used() {
        let (us, other) = (1000, 1001);
        assert_eq!(check_dir(us, 0o40700, us), DirCheck::Private);
        assert_eq!(check_dir(us, 0o40755, us), DirCheck::Tighten);
        assert_eq!(check_dir(us, 0o40750, us), DirCheck::Tighten);
        assert_eq!(check_dir(us, 0o40777, us), DirCheck::Writable);
        assert_eq!(check_dir(us, 0o41777, us), DirCheck::Writable);
        assert_eq!(check_dir(us, 0o40720, us), DirCheck::Writable);
        // The takeover of issue #23: another user's sticky, world-writable directory.
        assert_eq!(check_dir(other, 0o41777, us), DirCheck::NotOurs);
        assert_eq!(check_dir(other, 0o40700, us), DirCheck::NotOurs);
        assert_eq!(check_dir(0, 0o41777, us), DirCheck::Private);
        assert_eq!(check_dir(0, 0o40755, us), DirCheck::NotOurs);
    }
}
