//! `p2p send -`: what arrives on stdin is written into a private folder the daemon makes
//! in its state directory (on disk, not the runtime directory's small tmpfs), and sent
//! under the name given with `--name`. The daemon owns it: it is removed when the send is
//! over, or when this `p2p` goes away before sending it (killed while reading stdin).
//!
//! Spooled rather than streamed: the offer keeps a known size (the receiver sees a total
//! and a time left, and checks free space before accepting), the job stays resumable like
//! any file's, and `tar c dir | p2p send -` behaves as croc's and magic-wormhole's users
//! expect of a file. The cost is reading the whole pipe before the code appears, shown
//! as it goes.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{Request, ServerFrame};

use crate::follow::unexpected;

/// The name stdin is sent under when `--name` is not given.
pub const DEFAULT_NAME: &str = "stdin";

/// Copies all of stdin into `NAME` in a spool folder the daemon behind `client` made;
/// returns the file's path, for the send on the same connection.
pub async fn from_stdin(client: &mut IpcClient, name: Option<&str>) -> anyhow::Result<PathBuf> {
    if std::io::stdin().is_terminal() {
        bail!(
            "stdin is a terminal: pipe the data in, like `tar c photos | p2p send - --name photos.tar`"
        );
    }
    let name = name.unwrap_or(DEFAULT_NAME);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("--name must be a plain file name, like notes.txt, not {name:?}");
    }
    let dir = match client.call(Request::Spool).await? {
        ServerFrame::Spool { dir } => dir,
        other => return Err(unexpected(other)),
    };
    let file = dir.join(name);
    // The copy blocks this (single-threaded) runtime, which has nothing else to do: the
    // connection to the daemon only has to stay open, so the spool stays ours.
    copy_stdin(&file).with_context(|| format!("cannot keep stdin in {}", dir.display()))?;
    Ok(file)
}

fn copy_stdin(file: &Path) -> anyhow::Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    let shown = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template("Reading stdin: {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut stdin = std::io::stdin().lock();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = match stdin.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read stdin")),
        };
        out.write_all(&buffer[..n])?;
        shown.inc(n as u64);
    }
    out.flush()?;
    shown.finish_and_clear();
    Ok(())
}
