//! Where each offered file lives on the receiving disk while it is received, and what is
//! renamed into place when. Pure: paths only, no I/O.
//!
//! Every top-level entry of the offer (one per sender argument) is received under a
//! partial name carrying the job's random tag. A plain file is renamed to a free name as
//! soon as it is verified; a folder is built inside its partial directory and renamed as a
//! whole once every file in the offer is verified, so no folder is ever half there under
//! its final name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::names::partial_name;
use super::wire::Manifest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Top {
    pub name: String,
    pub folder: bool,
}

#[derive(Debug, Clone)]
pub struct Layout {
    tag: String,
    tops: Vec<Top>,
    /// For each file: its top-level entry and its path inside that entry ("" for a file
    /// that is itself the top-level entry).
    files: Vec<(usize, String)>,
}

impl Layout {
    /// `manifest` must already be validated (see `names::validate_offer`).
    pub fn new(manifest: &Manifest, tag: &str) -> Layout {
        let mut tops: Vec<Top> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut top_index = |name: &str, folder: bool, tops: &mut Vec<Top>| -> usize {
            let top = top_of(name);
            let folder = folder || top.len() < name.len();
            let index = *by_name.entry(top.to_owned()).or_insert_with(|| {
                tops.push(Top {
                    name: top.to_owned(),
                    folder,
                });
                tops.len() - 1
            });
            tops[index].folder |= folder;
            index
        };
        let mut files = Vec::with_capacity(manifest.files.len());
        for file in &manifest.files {
            let top = top_index(&file.name, false, &mut tops);
            let inner = file
                .name
                .split_once('/')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default();
            files.push((top, inner));
        }
        for folder in &manifest.folders {
            top_index(&folder.name, true, &mut tops);
        }
        Layout {
            tag: tag.to_owned(),
            tops,
            files,
        }
    }

    pub fn tops(&self) -> &[Top] {
        &self.tops
    }

    /// The partial name of a top-level entry, directly in the download directory.
    pub fn partial_top(&self, dir: &Path, top: usize) -> PathBuf {
        dir.join(partial_name(&self.tops[top].name, &self.tag))
    }

    /// Where file `index` is written while it is received.
    pub fn partial_file(&self, dir: &Path, index: usize) -> PathBuf {
        let (top, inner) = &self.files[index];
        let base = self.partial_top(dir, *top);
        if inner.is_empty() {
            base
        } else {
            base.join(inner)
        }
    }

    /// True when file `index` is a top-level file, renamed into place once verified.
    pub fn is_top_file(&self, index: usize) -> bool {
        !self.tops[self.files[index].0].folder
    }

    pub fn top_name_of(&self, index: usize) -> &str {
        &self.tops[self.files[index].0].name
    }

    /// The folder at `name` (a relative offer path) inside its top's partial directory.
    pub fn partial_folder(&self, dir: &Path, name: &str) -> PathBuf {
        let top = by_top(&self.tops, top_of(name));
        let base = self.partial_top(dir, top);
        match name.split_once('/') {
            Some((_, rest)) => base.join(rest),
            None => base,
        }
    }
}

fn top_of(name: &str) -> &str {
    name.split('/').next().unwrap_or(name)
}

fn by_top(tops: &[Top], name: &str) -> usize {
    tops.iter().position(|t| t.name == name).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::wire::{FileEntry, FolderEntry};

    fn file(name: &str) -> FileEntry {
        FileEntry {
            name: name.into(),
            ..FileEntry::default()
        }
    }

    #[test]
    fn files_and_folders_map_under_tagged_partials() {
        let manifest = Manifest {
            files: vec![file("a.txt"), file("docs/x/y.md"), file("docs/z")],
            folders: vec![
                FolderEntry {
                    name: "docs".into(),
                    mtime: None,
                },
                FolderEntry {
                    name: "empty".into(),
                    mtime: None,
                },
                FolderEntry {
                    name: "docs/e".into(),
                    mtime: None,
                },
            ],
            skipped: vec![],
        };
        let layout = Layout::new(&manifest, "t1");
        let dir = Path::new("/d");
        assert_eq!(
            layout.tops(),
            &[
                Top {
                    name: "a.txt".into(),
                    folder: false
                },
                Top {
                    name: "docs".into(),
                    folder: true
                },
                Top {
                    name: "empty".into(),
                    folder: true
                },
            ]
        );
        assert_eq!(
            layout.partial_file(dir, 0),
            Path::new("/d/a.txt.t1.p2pd-part")
        );
        assert!(layout.is_top_file(0));
        assert_eq!(
            layout.partial_file(dir, 1),
            Path::new("/d/docs.t1.p2pd-part/x/y.md")
        );
        assert!(!layout.is_top_file(2));
        assert_eq!(
            layout.partial_folder(dir, "docs/e"),
            Path::new("/d/docs.t1.p2pd-part/e")
        );
        assert_eq!(
            layout.partial_folder(dir, "empty"),
            Path::new("/d/empty.t1.p2pd-part")
        );
    }
}
