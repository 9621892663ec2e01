//! Default places: the control socket, the download and state directories (with the
//! ones an older version used), and the device's default name.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// This machine's host name, the default device name; "p2pd" if it has none usable.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if ok && crate::devices::registry::valid_device_name(&name) {
        name
    } else {
        "p2pd".to_owned()
    }
}

pub(super) fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "p2pd")
}

/// The directory systemd made for the unit and names in `var` (`RuntimeDirectory=`,
/// `StateDirectory=`): it may list several, separated by ':'; ours is the first.
fn systemd_dir(var: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os(var).filter(|d| !d.is_empty())?;
    let first = dirs.to_string_lossy().split(':').next()?.to_owned();
    Some(PathBuf::from(first))
}

/// The control socket's default path, shared by the daemon and the CLI:
/// `$RUNTIME_DIRECTORY` under systemd, else `$XDG_RUNTIME_DIR/p2pd`, else a per-user
/// directory in `/tmp`.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = systemd_dir("RUNTIME_DIRECTORY") {
        return dir.join("p2pd.sock");
    }
    if let Some(dir) = project_dirs().and_then(|d| d.runtime_dir().map(Path::to_owned)) {
        return dir.join("p2pd.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir()
        .join(format!("p2pd-{uid}"))
        .join("p2pd.sock")
}

pub fn default_download_dir() -> Result<PathBuf, ConfigError> {
    let user = directories::UserDirs::new().ok_or(ConfigError::NoDownloadDir)?;
    Ok(user
        .download_dir()
        .map(Path::to_owned)
        .unwrap_or_else(|| user.home_dir().join("Downloads")))
}

/// The one default home of the identity key, pairings and durable jobs, run by hand or as
/// the unit: `$STATE_DIRECTORY` under systemd (`StateDirectory=p2pd`), else
/// `$XDG_STATE_HOME/p2pd` (`~/.local/state/p2pd`).
pub fn default_state_dir() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = systemd_dir("STATE_DIRECTORY") {
        return Ok(dir);
    }
    project_dirs()
        .map(|d| d.state_dir().unwrap_or(d.data_dir()).to_owned())
        .ok_or(ConfigError::NoStateDir)
}

/// Where versions before the one default kept the same state: `~/.local/share/p2pd/jobs`
/// run by hand, `~/.local/state/p2pd/jobs` under the unit (`daemon::migrate` moves it).
pub fn earlier_state_dirs() -> Vec<PathBuf> {
    let Some(dirs) = project_dirs() else {
        return Vec::new();
    };
    let mut earlier = vec![dirs.data_dir().join("jobs")];
    if let Some(state) = dirs.state_dir() {
        earlier.push(state.join("jobs"));
    }
    earlier
}
