//! The control socket: a private directory, stale-socket recovery, and peer checks.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another p2pd is already running on {0}: stop it first, or pass --socket PATH")]
    InUse(PathBuf),
    #[error("socket directory {path} is not private to this user: fix its owner and mode (0700)")]
    Unsafe { path: PathBuf },
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

fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(source) => {
            return Err(SocketError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    }
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if meta.uid() != current_uid() {
        // A shared directory like /tmp itself: the socket's own mode protects it.
        if meta.mode() & 0o1000 != 0 {
            return Ok(());
        }
        return Err(SocketError::Unsafe {
            path: dir.to_owned(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    Ok(())
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
