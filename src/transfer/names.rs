//! Checks on names that come from the peer, and the local names derived from them. Pure.

use std::collections::HashSet;

use super::wire::FileEntry;

/// Suffix of files still being received; a peer may not send a name that ends with it.
pub const PARTIAL_SUFFIX: &str = ".p2pd-part";
/// Longest name accepted, in bytes: the common filesystem limit, less room for a
/// collision suffix and the partial suffix.
pub const MAX_NAME_BYTES: usize = 200;
/// Most files one offer may list.
pub const MAX_FILES: usize = 100_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the offer lists no files")]
    Empty,
    #[error("the offer lists {0} files, more than {MAX_FILES}")]
    TooMany(usize),
    #[error("file name {0} is not allowed")]
    Invalid(String),
    #[error("file name {0} appears twice in the offer")]
    Duplicate(String),
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

/// Control characters (C0, DEL, C1) and the Unicode marks that reorder or hide text.
fn is_dangerous_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Checks a whole offer before anything is written. Returns the total size.
pub fn validate_offer(files: &[FileEntry]) -> Result<u64, NameError> {
    if files.is_empty() {
        return Err(NameError::Empty);
    }
    if files.len() > MAX_FILES {
        return Err(NameError::TooMany(files.len()));
    }
    let mut seen = HashSet::with_capacity(files.len());
    let mut total: u64 = 0;
    for file in files {
        validate_name(&file.name)?;
        // Case-folded, so two names cannot land on one file on a case-insensitive disk.
        if !seen.insert(file.name.to_lowercase()) {
            return Err(NameError::Duplicate(escape_for_terminal(&file.name)));
        }
        total = total
            .checked_add(file.size)
            .ok_or(NameError::SizeOverflow)?;
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

/// The partial file's name for the n-th attempt.
pub fn partial_name(name: &str, n: u32) -> String {
    if n == 0 {
        format!("{name}{PARTIAL_SUFFIX}")
    } else {
        format!("{name}.{n}{PARTIAL_SUFFIX}")
    }
}

/// A name as it may be shown on a terminal: control and invisible characters escaped.
pub fn escape_for_terminal(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if is_dangerous_char(c) || c == '\\' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> FileEntry {
        FileEntry {
            name: name.into(),
            size: 1,
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
        assert_eq!(validate_offer(&[]), Err(NameError::Empty));
        assert!(matches!(
            validate_offer(&[entry("a"), entry("A")]),
            Err(NameError::Duplicate(_))
        ));
        let big = FileEntry {
            name: "b".into(),
            size: u64::MAX,
        };
        assert_eq!(
            validate_offer(&[entry("a"), big]),
            Err(NameError::SizeOverflow)
        );
        assert_eq!(validate_offer(&[entry("a"), entry("b")]), Ok(2));
    }

    #[test]
    fn collision_names_keep_the_extension() {
        assert_eq!(numbered_name("a.tar.gz", 0), "a.tar.gz");
        assert_eq!(numbered_name("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(numbered_name("notes", 1), "notes (1)");
        assert_eq!(numbered_name(".bashrc", 1), ".bashrc (1)");
        assert_eq!(partial_name("a.bin", 0), "a.bin.p2pd-part");
        assert_eq!(partial_name("a.bin", 3), "a.bin.3.p2pd-part");
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
