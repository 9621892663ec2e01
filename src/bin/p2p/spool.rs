//! `p2p send -`: what arrives on stdin is kept in a private file beside the daemon's
//! socket (a directory the daemon can read even when its unit hides `/tmp`), sent under
//! the name given with `--name`, and removed when this `p2p` is done with it.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The name stdin is sent under when `--name` is not given.
pub const DEFAULT_NAME: &str = "stdin";

pub struct Spool {
    dir: PathBuf,
    file: PathBuf,
}

impl Spool {
    /// Copies all of stdin into `NAME` in a new private directory next to `socket`.
    pub fn from_stdin(socket: &Path, name: Option<&str>) -> anyhow::Result<Spool> {
        if std::io::stdin().is_terminal() {
            bail!(
                "stdin is a terminal: pipe the data in, like `tar c photos | p2p send - --name photos.tar`"
            );
        }
        let name = name.unwrap_or(DEFAULT_NAME);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            bail!("--name must be a plain file name, like notes.txt, not {name:?}");
        }
        let parent = socket.parent().unwrap_or(Path::new("."));
        let dir = parent.join(format!(
            "p2p-stdin-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot keep stdin in {}", parent.display()))?;
        let spool = Spool {
            file: dir.join(name),
            dir,
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spool.file)
            .with_context(|| format!("cannot keep stdin in {}", spool.dir.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut out).context("cannot read stdin")?;
        out.flush()?;
        Ok(spool)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
