//! Transfer codes: `NAMEPLATE-WORD-WORD`. Pure parsing and generation, no I/O.
//!
//! The nameplate is public (it selects a slot on the rendezvous); the words are the
//! password for the PAKE and never leave the two machines.

use std::fmt;
use std::str::FromStr;

use super::words::WORDS;

/// How many words a code carries. Two words of 8 bits give a 1-in-65 536 chance to a
/// guesser, who gets one try per nameplate because a failed PAKE burns it.
pub const CODE_WORDS: usize = 2;

/// A parsed transfer code.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    pub nameplate: u32,
    words: [&'static str; CODE_WORDS],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("the code is empty: give the code the sender's p2p printed, like 7-orbit-lantern")]
    Empty,
    #[error("the code must start with a number, like 7-orbit-lantern")]
    MissingNameplate,
    #[error(
        "the code has {0} word(s) after the number but needs {CODE_WORDS}: check it, like 7-orbit-lantern"
    )]
    WrongWordCount(usize),
    #[error("'{word}' is not one of p2pd's code words: {}", word_hint(*.nearest))]
    UnknownWord {
        word: String,
        /// The list's closest word, when a typo explains the difference.
        nearest: Option<&'static str>,
    },
}

fn word_hint(nearest: Option<&str>) -> String {
    match nearest {
        Some(word) => format!("did you mean '{word}'? (p2p words lists them all)"),
        None => "check the spelling of the code (p2p words lists them all)".to_owned(),
    }
}

/// The words codes are made of, in the list's order.
pub fn code_words() -> &'static [&'static str] {
    &WORDS
}

/// The list's word closest to `typed` (lowercase), if at most two edits away; the first
/// in list order on a tie. Two edits cover a dropped, doubled or swapped letter.
pub fn nearest_word(typed: &str) -> Option<&'static str> {
    WORDS
        .iter()
        .map(|w| (strsim::levenshtein(typed, w), *w))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, w)| w)
}

impl Code {
    /// A fresh code for `nameplate` with distinct words from the OS's secure RNG (a
    /// repeated word reads like a typo, and costs under half a bit).
    pub fn generate(nameplate: u32) -> Code {
        let mut rng = rand::rngs::OsRng;
        let picked = rand::seq::index::sample(&mut rng, WORDS.len(), CODE_WORDS);
        let mut words = [""; CODE_WORDS];
        for (slot, index) in words.iter_mut().zip(picked.iter()) {
            *slot = WORDS[index];
        }
        Code { nameplate, words }
    }

    /// A code for `nameplate` with words the sender chose (`orbit-lantern`), from the same
    /// list: easier for people to pass on, and easier to guess than random words, but a
    /// guesser still gets one try.
    pub fn with_words(nameplate: u32, words: &str) -> Result<Code, CodeError> {
        format!("{nameplate}-{words}").parse()
    }

    /// The password both sides feed to SPAKE2: the whole code, canonical form.
    pub fn password(&self) -> String {
        self.to_string()
    }
}

impl FromStr for Code {
    type Err = CodeError;

    fn from_str(input: &str) -> Result<Code, CodeError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(CodeError::Empty);
        }
        // Accept spaces as separators too: people read codes aloud and type what they hear.
        let mut parts = trimmed
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty());
        let nameplate = parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .ok_or(CodeError::MissingNameplate)?;
        let given: Vec<&str> = parts.collect();
        if given.len() != CODE_WORDS {
            return Err(CodeError::WrongWordCount(given.len()));
        }
        let mut words = [""; CODE_WORDS];
        for (slot, word) in words.iter_mut().zip(&given) {
            let lower = word.to_lowercase();
            *slot = WORDS
                .iter()
                .find(|w| **w == lower)
                .copied()
                .ok_or_else(|| CodeError::UnknownWord {
                    word: printable(word),
                    nearest: nearest_word(&lower),
                })?;
        }
        Ok(Code { nameplate, words })
    }
}

/// Keeps a hostile or mistyped word from writing control characters to a terminal.
fn printable(word: &str) -> String {
    word.chars().flat_map(char::escape_debug).take(40).collect()
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.nameplate)?;
        for w in &self.words {
            write!(f, "-{w}")?;
        }
        Ok(())
    }
}

// Codes are secrets: never print them through `{:?}` in logs.
impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({}-<redacted>)", self.nameplate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_words_come_from_the_list() {
        let code = Code::with_words(42, "Orbit lantern").unwrap();
        assert_eq!(code, "42-orbit-lantern".parse().unwrap());
        assert!(matches!(
            Code::with_words(42, "orbit-zzzz"),
            Err(CodeError::UnknownWord { .. })
        ));
        assert!(matches!(
            Code::with_words(42, "orbit"),
            Err(CodeError::WrongWordCount(1))
        ));
    }

    #[test]
    fn a_typo_gets_the_nearest_word_and_the_way_to_see_them_all() {
        let typo = "7-fosil-lantern".parse::<Code>().unwrap_err();
        assert_eq!(
            typo,
            CodeError::UnknownWord {
                word: "fosil".into(),
                nearest: nearest_word("fosil"),
            }
        );
        let message = typo.to_string();
        assert!(
            message.contains("did you mean '") && message.contains("p2p words"),
            "{message}"
        );
        assert_eq!(
            nearest_word("lantren"),
            Some("lantern"),
            "two swapped letters"
        );
        assert_eq!(nearest_word("orbitt"), Some("orbit"));
        assert_eq!(nearest_word("xyzzyq"), None);
        let far = "7-notaword-orbit".parse::<Code>().unwrap_err().to_string();
        assert!(
            far.ends_with("check the spelling of the code (p2p words lists them all)"),
            "{far}"
        );
    }

    #[test]
    fn generated_codes_never_repeat_a_word() {
        for _ in 0..2000 {
            let code = Code::generate(1);
            assert_ne!(code.words[0], code.words[1]);
        }
    }

    #[test]
    fn generated_codes_round_trip() {
        for nameplate in [0, 7, 999, u32::MAX] {
            let code = Code::generate(nameplate);
            let parsed: Code = code.to_string().parse().unwrap();
            assert_eq!(parsed, code);
        }
    }

    #[test]
    fn parsing_is_forgiving_about_case_and_separators() {
        let code: Code = " 12 Orbit-LANTERN ".parse().unwrap();
        assert_eq!(code.to_string(), "12-orbit-lantern");
    }

    #[test]
    fn malformed_codes_are_rejected_before_any_network_use() {
        assert_eq!("".parse::<Code>(), Err(CodeError::Empty));
        assert_eq!(
            "orbit-lantern".parse::<Code>(),
            Err(CodeError::MissingNameplate)
        );
        assert_eq!("7-orbit".parse::<Code>(), Err(CodeError::WrongWordCount(1)));
        assert_eq!("7".parse::<Code>(), Err(CodeError::WrongWordCount(0)));
        assert_eq!(
            "7-orbit-lantern-apple".parse::<Code>(),
            Err(CodeError::WrongWordCount(3))
        );
        assert!(matches!(
            "7-orbit-notaword".parse::<Code>(),
            Err(CodeError::UnknownWord { .. })
        ));
    }

    #[test]
    fn debug_output_hides_the_words() {
        let code: Code = "3-orbit-lantern".parse().unwrap();
        let shown = format!("{code:?}");
        assert!(!shown.contains("orbit"), "{shown}");
    }

    #[test]
    fn word_list_is_unique_and_plain() {
        let mut sorted = WORDS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert!(
            WORDS
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        );
    }
}
