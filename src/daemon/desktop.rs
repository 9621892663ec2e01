//! A desktop notification when an offer from a paired or nearby device waits in the
//! inbox: through `notify-send` (libnotify, which speaks the freedesktop notification
//! D-Bus interface) where it is installed and a session bus is there to hear it. A daemon
//! without either (a server, a system service) simply has none; nothing waits on it.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::HumanBytes;
use tracing::debug;

/// Longest a notification may take to hand over.
const NOTIFY_LIMIT: Duration = Duration::from_secs(5);

/// What the notification says (pure): a summary and a body, with the characters that
/// notification bodies take as markup escaped, and no control characters.
pub fn text(job: u64, from: &str, files: usize, bytes: u64) -> (String, String) {
    let from = crate::terminal::escape_controls(from)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let what = match files {
        0 => "a message".to_owned(),
        1 => format!("1 file, {}", HumanBytes(bytes)),
        n => format!("{n} files, {}", HumanBytes(bytes)),
    };
    (
        format!("Files from {from}"),
        format!("{what}. Run p2p inbox, then p2p accept {job} or p2p decline {job}."),
    )
}

fn notify_send() -> Option<PathBuf> {
    let session_bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
        || std::env::var_os("XDG_RUNTIME_DIR")
            .is_some_and(|dir| PathBuf::from(dir).join("bus").exists());
    if !session_bus {
        return None;
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("notify-send"))
        .find(|path| path.is_file())
}

/// Fewest seconds between two notifications: offers arriving faster (a nearby device
/// offering again and again) share the first one's.
const NOTIFY_EVERY: Duration = Duration::from_secs(10);
static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Shows the notification, if this machine can; never waits for it.
pub fn offer_waiting(job: u64, from: &str, files: usize, bytes: u64) {
    {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < NOTIFY_EVERY) {
            return;
        }
        *last = Some(now);
    }
    let Some(program) = notify_send() else {
        return;
    };
    let (summary, body) = text(job, from, files, bytes);
    // Not on the daemon's tracker: it ends by itself within NOTIFY_LIMIT (its process is
    // killed then), and nothing waits on it.
    tokio::spawn(async move {
        let shown = tokio::time::timeout(
            NOTIFY_LIMIT,
            tokio::process::Command::new(program)
                .args(["--app-name=p2pd", "--category=transfer"])
                .arg(summary)
                .arg(body)
                .kill_on_drop(true)
                .status(),
        )
        .await;
        if !matches!(shown, Ok(Ok(status)) if status.success()) {
            debug!("no desktop notification for the offer");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn a_notification_names_the_sender_safely_and_says_what_to_run() {
        let (summary, body) = text(7, "Ana's <b>phone</b>\u{1b}[2J", 3, 2048);
        assert!(
            !summary.contains('\u{1b}') && !summary.contains('<'),
            "{summary}"
        );
        assert!(
            summary.starts_with("Files from Ana's &lt;b&gt;phone"),
            "{summary}"
        );
        assert_eq!(
            body,
            "3 files, 2.00 KiB. Run p2p inbox, then p2p accept 7 or p2p decline 7."
        );
        assert!(text(1, "x", 1, 10).1.starts_with("1 file, 10 B."));
    }
}
