//! The sender's filesystem edge: turns the paths a user gave into an offer. Folders are
//! walked without following symlinks; symlinks and special files are left out and listed.
//! Blocking I/O; nothing is read from the files themselves.

use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::names::{self, NameError};
use super::store::mtime_seconds;
use super::wire::{FileEntry, FolderEntry, Manifest};

/// An offer and, for each file in it, where the sender reads it from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub manifest: Manifest,
    pub paths: Vec<PathBuf>,
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
            // Fail now, not mid-transfer, on a file we may not read.
            std::fs::File::open(path).map_err(|e| unusable(&shown, &e))?;
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
