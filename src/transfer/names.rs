//! Checks on names that come from the peer, and the local names derived from them. Pure.

use std::collections::HashSet;

use super::wire::Manifest;
use crate::terminal::is_dangerous_char;
// One escaping for every output; re-exported where the transfer code has always found it.
pub use crate::terminal::{escape_for_terminal, peer_text};

/// Suffix of files still being received; a peer may not send a name that ends with it.
pub const PARTIAL_SUFFIX: &str = ".p2pd-part";
/// Longest name accepted, in bytes: the common filesystem limit, less room for a
/// collision suffix and the partial suffix.
pub const MAX_NAME_BYTES: usize = 200;
/// Most files one offer may list.
pub const MAX_FILES: usize = 100_000;
/// Deepest folder nesting accepted, and longest relative path in bytes (below PATH_MAX
/// with room for the download directory).
pub const MAX_DEPTH: usize = 64;
pub const MAX_PATH_BYTES: usize = 2048;

/// The receiver's own caps on an offer, checked before anyone is asked to accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_files: usize,
    pub max_total_bytes: u64,
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: MAX_FILES,
            max_total_bytes: u64::MAX,
            max_file_bytes: u64::MAX,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the offer lists no files")]
    Empty,
    #[error(
        "the offer lists {count} files, more than this receiver's limit of {limit} (its max_files, or p2p rule --max-files for a paired device)"
    )]
    TooMany { count: usize, limit: usize },
    #[error(
        "file {name} is {}, more than this receiver's limit of {} per file (its max_file_bytes)",
        indicatif::HumanBytes(*.size), indicatif::HumanBytes(*.limit)
    )]
    FileTooLarge { name: String, size: u64, limit: u64 },
    #[error(
        "the offer totals {}, more than the {} this receiver accepts (its max_total_bytes, or p2p rule --max-size for a paired device)",
        indicatif::HumanBytes(*.total), indicatif::HumanBytes(*.limit)
    )]
    TotalTooLarge { total: u64, limit: u64 },
    #[error("file name {0} is not allowed")]
    Invalid(String),
    #[error("file name {0} appears twice in the offer")]
    Duplicate(String),
    #[error("{0} is offered both as a file and as a folder")]
    FileAndFolder(String),
    #[error("the offered sizes add up to more than 2^64 bytes")]
    SizeOverflow,
}

/// Checks one name from the peer: a single, plain, printable path component.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bad = || NameError::Invalid(escape_for_terminal(name));
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name == "." || name == ".." {
        return Err(bad());
    }
    if name.ends_with(PARTIAL_SUFFIX) || name.trim() != name {
        return Err(bad());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c == ':' || is_dangerous_char(c))
    {
        return Err(bad());
    }
    Ok(())
}

/// Checks a relative path from the peer: `/`-separated components, each a valid name.
pub fn validate_path(path: &str) -> Result<(), NameError> {
    let bad = || NameError::Invalid(escape_for_terminal(path));
    if path.len() > MAX_PATH_BYTES || path.split('/').count() > MAX_DEPTH {
        return Err(bad());
    }
    for component in path.split('/') {
        validate_name(component).map_err(|_| bad())?;
    }
    Ok(())
}

/// Checks a whole offer before anything is written. Returns the total size.
pub fn validate_offer(offer: &Manifest, limits: &Limits) -> Result<u64, NameError> {
    let files = &offer.files;
    if files.is_empty() && offer.folders.is_empty() {
        return Err(NameError::Empty);
    }
    let max_files = limits.max_files.min(MAX_FILES);
    let count = files.len() + offer.folders.len() + offer.skipped.len();
    if count > max_files {
        return Err(NameError::TooMany {
            count,
            limit: max_files,
        });
    }
    // Case-folded, so two names cannot land on one file on a case-insensitive disk.
    let mut folders = HashSet::with_capacity(offer.folders.len());
    for folder in &offer.folders {
        validate_path(&folder.name)?;
        if !folders.insert(folder.name.to_lowercase()) {
            return Err(NameError::Duplicate(escape_for_terminal(&folder.name)));
        }
    }
    let mut seen = HashSet::with_capacity(files.len());
    let mut total: u64 = 0;
    for file in files {
        validate_path(&file.name)?;
        let folded = file.name.to_lowercase();
        if folders.contains(&folded) {
            return Err(NameError::FileAndFolder(escape_for_terminal(&file.name)));
        }
        if !seen.insert(folded) {
            return Err(NameError::Duplicate(escape_for_terminal(&file.name)));
        }
        if file.size > limits.max_file_bytes {
            return Err(NameError::FileTooLarge {
                name: escape_for_terminal(&file.name),
                size: file.size,
                limit: limits.max_file_bytes,
            });
        }
        total = total
            .checked_add(file.size)
            .ok_or(NameError::SizeOverflow)?;
    }
    if total > limits.max_total_bytes {
        return Err(NameError::TotalTooLarge {
            total,
            limit: limits.max_total_bytes,
        });
    }
    // A file may not sit where the offer needs a folder ("a" and "a/b" both as files).
    for file in files {
        let mut prefix = file.name.as_str();
        while let Some(slash) = prefix.rfind('/') {
            prefix = &prefix[..slash];
            if seen.contains(&prefix.to_lowercase()) {
                return Err(NameError::FileAndFolder(escape_for_terminal(prefix)));
            }
        }
    }
    for path in &offer.skipped {
        if path.len() > MAX_PATH_BYTES {
            return Err(NameError::Invalid(escape_for_terminal(path)));
        }
    }
    Ok(total)
}

/// `name (n).ext` for the n-th collision; n = 0 is the name itself.
pub fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        // A leading dot is a hidden file, not an extension.
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// The name a top-level entry has while it is being received. `tag` is random per job,
/// so the name is both unlikely to exist already and found again when the job resumes.
pub fn partial_name(name: &str, tag: &str) -> String {
    format!("{name}.{tag}{PARTIAL_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::transfer::wire::{FileEntry, FolderEntry};

    fn entry(name: &str) -> FileEntry {
        sized(name, 1)
    }

    fn sized(name: &str, size: u64) -> FileEntry {
        FileEntry {
            name: name.into(),
            size,
            ..FileEntry::default()
        }
    }

    fn offer(files: &[FileEntry]) -> Manifest {
        Manifest {
            files: files.to_vec(),
            ..Manifest::default()
        }
    }

    #[test]
    fn plain_names_pass() {
        for name in [
            "a",
            "report 2024.pdf",
            ".bashrc",
            "naïve café.txt",
            "数据.bin",
            "a..b",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn hostile_names_fail() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for name in [
            "",
            ".",
            "..",
            "/etc/passwd",
            "a/b",
            "..\\x",
            "C:x",
            "a\0b",
            "a\nb",
            "\u{1b}[2J",
            "a\u{7f}",
            "a\u{85}",
            "evil\u{202E}txt.exe",
            "a\u{2066}b",
            "a\u{2028}b",
            "a\u{061C}b",
            "tag\u{E0041}",
            " lead",
            "trail ",
            "x.p2pd-part",
            &long,
        ] {
            assert!(validate_name(name).is_err(), "{name:?} should be refused");
        }
    }

    #[test]
    fn offers_with_duplicates_or_overflow_fail_whole() {
        let any = Limits::default();
        assert_eq!(validate_offer(&offer(&[]), &any), Err(NameError::Empty));
        let twins = [entry("a"), entry("A")];
        assert!(matches!(
            validate_offer(&offer(&twins), &any),
            Err(NameError::Duplicate(_))
        ));
        let big = sized("b", u64::MAX);
        assert_eq!(
            validate_offer(&offer(&[entry("a"), big]), &any),
            Err(NameError::SizeOverflow)
        );
        assert_eq!(
            validate_offer(&offer(&[entry("a"), entry("b")]), &any),
            Ok(2)
        );
    }

    #[test]
    fn folder_offers_are_checked_as_trees() {
        let any = Limits::default();
        let tree = Manifest {
            files: vec![
                entry("photos/2024/a.jpg"),
                entry("photos/b c.jpg"),
                entry("x"),
            ],
            folders: vec![
                FolderEntry {
                    name: "photos".into(),
                    mtime: None,
                },
                FolderEntry {
                    name: "photos/empty".into(),
                    mtime: Some(5),
                },
            ],
            skipped: vec!["photos/link".into()],
        };
        assert_eq!(validate_offer(&tree, &any), Ok(3));
        for bad in [
            "photos/../x",
            "/abs",
            "a//b",
            "a/",
            "a/./b",
            "a/b\\c",
            "a/.p2pd-part",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        assert!(validate_path(&"a/".repeat(MAX_DEPTH)).is_err());
        let clash = offer(&[entry("a"), entry("A/b")]);
        assert!(matches!(
            validate_offer(&clash, &any),
            Err(NameError::FileAndFolder(_))
        ));
        let folder_clash = Manifest {
            files: vec![entry("a")],
            folders: vec![FolderEntry {
                name: "a".into(),
                mtime: None,
            }],
            skipped: vec![],
        };
        assert!(matches!(
            validate_offer(&folder_clash, &any),
            Err(NameError::FileAndFolder(_))
        ));
        let only_empty_folder = Manifest {
            folders: vec![FolderEntry {
                name: "e".into(),
                mtime: None,
            }],
            ..Manifest::default()
        };
        assert_eq!(validate_offer(&only_empty_folder, &any), Ok(0));
    }

    #[test]
    fn receiver_limits_apply_before_acceptance() {
        let limits = Limits {
            max_files: 2,
            max_total_bytes: 10,
            max_file_bytes: 6,
        };
        let three = [entry("a"), entry("b"), entry("c")];
        assert_eq!(
            validate_offer(&offer(&three), &limits),
            Err(NameError::TooMany { count: 3, limit: 2 })
        );
        let fat = [sized("f", 7)];
        assert!(matches!(
            validate_offer(&offer(&fat), &limits),
            Err(NameError::FileTooLarge { size: 7, .. })
        ));
        let sum = [sized("f", 6), sized("g", 5)];
        assert_eq!(
            validate_offer(&offer(&sum), &limits),
            Err(NameError::TotalTooLarge {
                total: 11,
                limit: 10
            })
        );
        let fine = [sized("f", 6), sized("g", 4)];
        assert_eq!(validate_offer(&offer(&fine), &limits), Ok(10));
    }

    #[test]
    fn collision_names_keep_the_extension() {
        assert_eq!(numbered_name("a.tar.gz", 0), "a.tar.gz");
        assert_eq!(numbered_name("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(numbered_name("notes", 1), "notes (1)");
        assert_eq!(numbered_name(".bashrc", 1), ".bashrc (1)");
        assert_eq!(partial_name("a.bin", "0f3c"), "a.bin.0f3c.p2pd-part");
    }

    #[test]
    fn escaping_neutralises_terminal_control() {
        let shown = escape_for_terminal("a\u{1b}[2Jb\u{202E}");
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{202E}'),
            "{shown}"
        );
    }
}
