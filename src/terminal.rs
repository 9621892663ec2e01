//! Text that came from a file name, a peer or the network, made safe to show. Pure.
//!
//! One rule for every output: characters that move the cursor, change the terminal's state
//! or reorder what is shown are written as `\u{…}` escapes. `p2p` passes every line it
//! prints through [`escape_controls`] and every JSON line through [`JsonFormatter`], so
//! a string that slipped past an earlier escape is still harmless.

use std::io;

/// Control characters (C0, DEL, C1), the marks that reorder or hide text (bidi embeddings,
/// overrides and isolates, zero-width and invisible characters), line and paragraph
/// separators, tag characters, and the blank fillers that show as nothing or as a space
/// (Hangul fillers, the Braille blank, the combining grapheme joiner, Khmer inherent
/// vowels, Mongolian variation selectors): "lap\u{3164}top" must not pass for "laptop".
pub fn is_dangerous_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FFA0}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `text` with every dangerous character written as `\u{…}`. Idempotent: the result holds
/// no dangerous character, so escaping it again changes nothing.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_dangerous_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A name (file, folder or path) as it may be shown: quoted, with dangerous characters and
/// backslashes escaped, so the reader sees exactly which name is meant.
pub fn escape_for_terminal(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if is_dangerous_char(c) || c == '\\' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// A local path shown in a message: see [`escape_for_terminal`].
pub fn escape_path(path: &std::path::Path) -> String {
    escape_for_terminal(&path.to_string_lossy())
}

/// Free text from the peer (a reason), made safe for one terminal line: dangerous
/// characters escaped, and cut to a sane length.
pub fn peer_text(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = escape_controls(&text.chars().take(MAX_CHARS).collect::<String>());
    if text.chars().count() > MAX_CHARS {
        out.push('…');
    }
    out
}

/// An error and its causes on one line, each layer describing only itself.
pub fn error_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    escape_controls(&line)
}

/// A `serde_json` formatter that also escapes what JSON allows raw: DEL, C1 controls, bidi
/// and invisible characters come out as `\uXXXX`, so a JSON line printed on a terminal is
/// as harmless as a plain one, and a JSON parser still reads the exact string.
#[derive(Default)]
pub struct JsonFormatter;

impl serde_json::ser::Formatter for JsonFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if is_dangerous_char(c) {
                writer.write_all(&fragment.as_bytes()[start..at])?;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
                start = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `value` as one JSON line through [`JsonFormatter`].
pub fn json_line(value: &serde_json::Value) -> String {
    use serde::Serialize as _;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, JsonFormatter);
    // Writing a Value into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "a\u{1b}]0;PWNED\u{7}\u{1b}[2J\nb\r\u{7f}\u{9b}c\u{202E}d\u{2066}e\u{200B}f\u{E0041}g\u{3164}h\u{2800}i\u{115F}";

    fn harmless(text: &str) -> bool {
        !text.chars().any(is_dangerous_char)
    }

    #[test]
    fn every_dangerous_class_is_escaped() {
        for shown in [
            escape_controls(HOSTILE),
            escape_for_terminal(HOSTILE),
            peer_text(HOSTILE),
        ] {
            assert!(harmless(&shown), "{shown:?}");
            assert!(shown.contains("\\u{202e}"), "{shown}");
        }
        for c in [
            '\u{0}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{202A}', '\u{2069}',
        ] {
            assert!(is_dangerous_char(c), "{c:?}");
        }
        for c in ['a', 'é', '数', ' ', '…'] {
            assert!(!is_dangerous_char(c), "{c:?}");
        }
    }

    #[test]
    fn escaping_twice_changes_nothing_more() {
        let once = escape_controls(HOSTILE);
        assert_eq!(escape_controls(&once), once);
        assert_eq!(escape_for_terminal("a\\b"), "\"a\\u{5c}b\"");
    }

    #[test]
    fn peer_text_is_one_short_line() {
        let shown = peer_text(&format!("bad\n\u{1b}]0;owned\u{7}{}", "x".repeat(500)));
        assert!(harmless(&shown), "{shown}");
        assert!(shown.chars().count() < 300);
    }

    #[test]
    fn json_lines_escape_what_json_allows_raw_and_still_parse() {
        let value = serde_json::json!({"name": HOSTILE, "n": 1});
        let line = json_line(&value);
        assert!(line.is_ascii() || harmless(&line), "{line}");
        assert!(harmless(&line), "{line}");
        assert!(
            line.contains("\\u202e") && line.contains("\\udb40\\udc41"),
            "{line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn error_lines_show_each_layer_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write \u{1b}[2J")]
        struct Outer(#[source] io::Error);
        let error = Outer(io::Error::from_raw_os_error(13));
        let line = error_line(&error);
        assert_eq!(line.matches("os error 13").count(), 1, "{line}");
        assert!(harmless(&line), "{line}");
    }
}
