//! Control messages on the data channel: one JSON text message each, tagged by `type`.
//! File bytes travel as binary messages between `file_start` and `file_end`. Pure.

use serde::{Deserialize, Serialize};

/// Size of the binary messages file bytes are cut into. Large messages keep the per-message
/// cost low and let the sender batch datagrams (GSO needs runs of equal-size packets).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest control message accepted. Below the data channel's 256 KiB message ceiling.
pub const MAX_CONTROL_BYTES: usize = 192 * 1024;
/// Longest `p2p send --text` message: its JSON escaping (at most 6 bytes a byte) still
/// fits a control message.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// The sender starts a new offer message past this much of file list, leaving room for
/// JSON escaping to stay under [`MAX_CONTROL_BYTES`].
pub const OFFER_PART_BYTES: usize = 32 * 1024;

impl Control {
    /// The offer for `files`, split into messages that each stay under the size limit.
    pub fn offer_parts(manifest: &Manifest) -> Vec<Control> {
        let mut parts = Vec::new();
        let mut current = Control::Offer {
            files: Vec::new(),
            folders: Vec::new(),
            skipped: Vec::new(),
            more: true,
        };
        let mut bytes = 0;
        // A name escapes to at most 6 bytes per byte (\uXXXX), plus the fixed fields.
        let mut add = |name: &str, push: &mut dyn FnMut(&mut Control)| {
            let cost = name.len() * 6 + 96;
            if bytes > 0 && bytes + cost > OFFER_PART_BYTES {
                let full = std::mem::replace(
                    &mut current,
                    Control::Offer {
                        files: Vec::new(),
                        folders: Vec::new(),
                        skipped: Vec::new(),
                        more: true,
                    },
                );
                parts.push(full);
                bytes = 0;
            }
            bytes += cost;
            push(&mut current);
        };
        for file in &manifest.files {
            add(&file.name, &mut |c| {
                if let Control::Offer { files, .. } = c {
                    files.push(file.clone())
                }
            });
        }
        for folder in &manifest.folders {
            add(&folder.name, &mut |c| {
                if let Control::Offer { folders, .. } = c {
                    folders.push(folder.clone())
                }
            });
        }
        for path in &manifest.skipped {
            add(path, &mut |c| {
                if let Control::Offer { skipped, .. } = c {
                    skipped.push(path.clone())
                }
            });
        }
        if let Control::Offer { more, .. } = &mut current {
            *more = false;
        }
        parts.push(current);
        parts
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// A relative path chosen by the sender, `/`-separated: the first component is the
    /// top-level entry the receiver creates. Validated component by component.
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// A folder in the offer, listed so that empty folders and folder times survive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
}

/// Everything the sender offers: assembled from one or more `offer` messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<FileEntry>,
    pub folders: Vec<FolderEntry>,
    /// Sender-side paths left out (symlinks, devices, sockets), for the receiver to show.
    pub skipped: Vec<String>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Both sides, first message: proof of the PAKE key bound to the DTLS certificates
    /// (hex HMAC, see `rendezvous::crypto::channel_proof`).
    Hello {
        proof: String,
    },
    /// Manual signaling (no code), instead of `hello`: the sender commits to its nonce
    /// (hex SHA-256, see `transfer::sas`)...
    SasCommit {
        commit: String,
    },
    /// ...the receiver answers with its own nonce (hex, 32 bytes)...
    SasNonce {
        nonce: String,
    },
    /// ...and only then does the sender reveal the nonce it committed to.
    SasReveal {
        nonce: String,
    },
    /// Sender → receiver, after the hellos: everything that will be sent, in order. A
    /// long list is split over several messages; all but the last have `more: true`.
    Offer {
        files: Vec<FileEntry>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        folders: Vec<FolderEntry>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Sender → receiver, after the hellos, instead of an offer: a message to show (`p2p
    /// send --text`), at most [`MAX_TEXT_BYTES`]. The receiver answers `complete`.
    Text {
        text: String,
    },
    Accept,
    Reject {
        reason: String,
    },
    /// Sender: the binary messages that follow belong to file `index`, in offer order,
    /// starting at byte `offset` (non-zero only when resuming).
    FileStart {
        index: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
    },
    /// Receiver, first on a resumed connection: files before `index` are saved, and file
    /// `index` holds `offset` verified bytes whose SHA-256 is `sha256`.
    Resume {
        index: u32,
        offset: u64,
        sha256: String,
    },
    /// Receiver: everything is saved (sent when the offer held only folders).
    Complete,
    /// Sender: file `index` is complete; its SHA-256 in lowercase hex.
    FileEnd {
        index: u32,
        sha256: String,
    },
    /// Receiver: bytes written to disk so far, over all files.
    Progress {
        bytes: u64,
    },
    FileVerified {
        index: u32,
    },
    FileFailed {
        index: u32,
        reason: String,
        /// The received bytes did not match the sender's SHA-256 (as opposed to a local
        /// problem such as a full disk), so the sender can say which without parsing words.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mismatch: bool,
    },
    /// Sender, after every file is verified: the receiver may close.
    Done,
    /// Either side gives up; the other removes partial files and stops.
    Cancel {
        reason: String,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("control message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed control message")]
    Malformed,
}

impl Control {
    /// The message's `type` tag, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Control::Hello { .. } => "hello",
            Control::SasCommit { .. } => "sas_commit",
            Control::SasNonce { .. } => "sas_nonce",
            Control::SasReveal { .. } => "sas_reveal",
            Control::Offer { .. } => "offer",
            Control::Accept => "accept",
            Control::Reject { .. } => "reject",
            Control::Text { .. } => "text",
            Control::FileStart { .. } => "file_start",
            Control::Resume { .. } => "resume",
            Control::Complete => "complete",
            Control::FileEnd { .. } => "file_end",
            Control::Progress { .. } => "progress",
            Control::FileVerified { .. } => "file_verified",
            Control::FileFailed { .. } => "file_failed",
            Control::Done => "done",
            Control::Cancel { .. } => "cancel",
        }
    }

    pub fn encode(&self) -> String {
        // Serializing these plain enums into a String cannot fail.
        serde_json::to_string(self).expect("control messages always serialize")
    }

    pub fn decode(text: &str) -> Result<Control, WireError> {
        if text.len() > MAX_CONTROL_BYTES {
            return Err(WireError::TooLarge(text.len()));
        }
        serde_json::from_str(text).map_err(|_| WireError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let all = [
            Control::Hello { proof: "ab".into() },
            Control::SasCommit {
                commit: "ab".into(),
            },
            Control::SasNonce { nonce: "cd".into() },
            Control::SasReveal { nonce: "ef".into() },
            Control::Offer {
                files: vec![FileEntry {
                    name: "a b/c.txt".into(),
                    size: 3,
                    mtime: Some(1_700_000_000),
                    executable: true,
                }],
                folders: vec![FolderEntry {
                    name: "a b".into(),
                    mtime: None,
                }],
                skipped: vec!["a b/link".into()],
                more: true,
            },
            Control::Accept,
            Control::Resume {
                index: 3,
                offset: 1 << 20,
                sha256: "ab".into(),
            },
            Control::Complete,
            Control::Reject {
                reason: "no".into(),
            },
            Control::FileStart {
                index: 0,
                offset: 7,
            },
            Control::FileEnd {
                index: 0,
                sha256: "00".into(),
            },
            Control::Progress { bytes: u64::MAX },
            Control::FileVerified { index: 1 },
            Control::FileFailed {
                index: 1,
                reason: "x".into(),
                mismatch: true,
            },
            Control::Done,
            Control::Cancel {
                reason: "bye".into(),
            },
        ];
        for message in all {
            assert_eq!(Control::decode(&message.encode()).unwrap(), message);
            let tag = format!(r#"{{"type":"{}""#, message.kind());
            assert!(
                message.encode().starts_with(&tag),
                "kind matches the wire tag"
            );
        }
    }

    #[test]
    fn long_offers_split_under_the_limit_and_keep_order() {
        let manifest = Manifest {
            files: (0..20_000)
                .map(|i| FileEntry {
                    name: format!("d/file-{i:05}-\u{1F600}.bin"),
                    size: i,
                    mtime: Some(i as i64),
                    executable: i % 2 == 0,
                })
                .collect(),
            folders: (0..3000)
                .map(|i| FolderEntry {
                    name: format!("d/sub-{i}-\u{1F600}"),
                    mtime: Some(-1),
                })
                .collect(),
            skipped: (0..3000).map(|i| format!("d/link-{i}")).collect(),
        };
        let parts = Control::offer_parts(&manifest);
        assert!(parts.len() > 1);
        let mut joined = Manifest::default();
        for (i, part) in parts.iter().enumerate() {
            assert!(part.encode().len() <= MAX_CONTROL_BYTES);
            let Control::Offer {
                files,
                folders,
                skipped,
                more,
            } = part
            else {
                panic!("not an offer")
            };
            assert_eq!(*more, i + 1 < parts.len());
            joined.files.extend(files.iter().cloned());
            joined.folders.extend(folders.iter().cloned());
            joined.skipped.extend(skipped.iter().cloned());
        }
        assert_eq!(joined, manifest);
        let empty = Control::offer_parts(&Manifest::default());
        assert_eq!(
            empty,
            vec![Control::Offer {
                files: vec![],
                folders: vec![],
                skipped: vec![],
                more: false
            }]
        );
        assert_eq!(
            empty[0].encode(),
            r#"{"type":"offer","files":[]}"#,
            "old peers see the same form"
        );
    }

    #[test]
    fn wire_form_is_stable() {
        assert_eq!(
            Control::FileStart {
                index: 2,
                offset: 0
            }
            .encode(),
            r#"{"type":"file_start","index":2}"#
        );
        assert_eq!(Control::Done.encode(), r#"{"type":"done"}"#);
    }

    #[test]
    fn junk_is_an_error() {
        for junk in [
            "",
            "{",
            "null",
            r#"{"type":"launch"}"#,
            r#"{"type":"file_start","index":1,"extra":1}"#,
            r#"{"type":"progress","bytes":-1}"#,
        ] {
            assert_eq!(Control::decode(junk), Err(WireError::Malformed), "{junk}");
        }
        let huge = format!(
            r#"{{"type":"reject","reason":"{}"}}"#,
            "x".repeat(MAX_CONTROL_BYTES)
        );
        assert!(matches!(
            Control::decode(&huge),
            Err(WireError::TooLarge(_))
        ));
    }
}
