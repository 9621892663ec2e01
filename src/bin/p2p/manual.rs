//! Reading a pasted session description (`--manual`): one line from stdin, checked here
//! so that a bad paste gets its reason and another chance before the daemon sees it.

use std::io::{BufRead, Read};

use anyhow::bail;
use p2pd::rtc::peer::manual::{self, Kind, MAX_BLOB_BYTES};

/// Pastes a person may get wrong before `p2p` gives up.
pub const TRIES: usize = 3;

/// Reads lines from stdin until one holds a description of `kind` (at most [`TRIES`]);
/// returns the line as pasted.
pub fn read_description(kind: Kind) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    read_from(&mut input, kind, &mut std::io::stderr())
}

fn read_from(
    input: &mut impl BufRead,
    kind: Kind,
    err: &mut impl std::io::Write,
) -> anyhow::Result<String> {
    for attempt in 1..=TRIES {
        let mut line = String::new();
        // Bounded: a line longer than any description is cut and refused, never held whole.
        let read = input
            .by_ref()
            .take(MAX_BLOB_BYTES as u64 * 2)
            .read_line(&mut line)?;
        if read == 0 {
            bail!("stdin closed before the other side's {kind} was pasted");
        }
        match manual::decode(&line, kind) {
            Ok(_) => return Ok(line.trim().to_owned()),
            Err(error) if attempt < TRIES => {
                writeln!(err, "{error}. Paste it again:")?;
            }
            Err(error) => bail!("{error} ({TRIES} tries)"),
        }
    }
    unreachable!("the last try returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AB:CD\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";

    #[test]
    fn a_bad_paste_gets_its_reason_and_another_chance() {
        let good = manual::encode(Kind::Answer, SDP);
        let mut input = std::io::Cursor::new(format!("garbage!\n{good}\n"));
        let mut err = Vec::new();
        let line = read_from(&mut input, Kind::Answer, &mut err).unwrap();
        assert_eq!(line, good);
        let said = String::from_utf8(err).unwrap();
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(said.contains("not base64"), "{said}");
    }

    #[test]
    fn three_bad_pastes_or_a_closed_stdin_end_it() {
        let offer = manual::encode(Kind::Offer, SDP);
        let mut input = std::io::Cursor::new(format!("x\ny\n{offer}\n"));
        let error = read_from(&mut input, Kind::Answer, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("answer is needed"), "{error}");
        let mut empty = std::io::Cursor::new(String::new());
        let error = read_from(&mut empty, Kind::Offer, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("stdin closed"), "{error}");
    }
}
