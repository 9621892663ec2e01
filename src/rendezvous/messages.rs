//! JSON messages between a daemon and the rendezvous. Before key confirmation only the
//! PAKE and confirmation blobs cross as `relay` bodies; after it, only sealed blobs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Ask for a fresh nameplate and wait in its slot for a peer.
    Allocate,
    /// Join the slot another daemon allocated.
    Claim { nameplate: u32 },
    /// Wait on a job's rejoin channel (hex, from the resume secret) for the other side.
    /// `sender` tells the two sides apart, so a stale connection of our own side is
    /// replaced rather than paired with.
    Rejoin { channel: String, sender: bool },
    /// Opaque bytes (base64) for the paired peer.
    Relay { body: String },
    /// Key confirmation failed: end the pairing and never reuse this slot.
    Burn,
    /// Asks for the pair's TURN credentials, once this side has done its key exchange
    /// (answered with `ice`).
    Ice,
    /// Waits again in a nameplate this side allocated on a connection it lost (its
    /// instance died, its network dropped): `token` is the one `allocated` gave it.
    /// Answered with `allocated` (the same nameplate, the seconds it still waits, a
    /// fresh token is not given: the same one stays good), or `expired`.
    Reclaim { nameplate: u32, token: ReclaimToken },
    /// Stands for a daemon's mailboxes (rejoin channels, hex) on this one connection:
    /// answered with `watching`, then `knock {channel}` whenever a sender waits on one of
    /// them, for the daemon to meet it (`rejoin`) on a connection of its own.
    Watch { channels: Vec<String> },
}

/// What `allocated` gives the allocator to take its nameplate back with (`reclaim`). A
/// secret of that one connection: never in a log.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, Default, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub struct ReclaimToken(pub String);

impl ReclaimToken {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ReclaimToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReclaimToken(…)")
    }
}

/// Fields a client does not know are ignored (`reclaim` was added to `allocated`), so a
/// newer rendezvous can add one without breaking daemons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Allocated {
        nameplate: u32,
        expires_in_secs: u64,
        /// Absent from an older rendezvous, and in the answer to `reclaim`.
        #[serde(default, skip_serializing_if = "ReclaimToken::is_empty")]
        reclaim: ReclaimToken,
    },
    /// The peer is here. `ice_servers`: STUN/TURN to use for this pairing (TURN with
    /// short-lived credentials), when the rendezvous is configured with any.
    Paired {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServerInfo>,
    },
    Relay {
        body: String,
    },
    /// STUN and TURN for this pair, answering `ice`: TURN only once both sides relayed
    /// their key exchange (`paired` carries STUN only).
    Ice {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServerInfo>,
    },
    PeerGone,
    /// Answers `watch`.
    Watching,
    /// A sender waits on this watched channel.
    Knock {
        channel: String,
    },
    Error {
        kind: ServerErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerInfo {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerErrorKind {
    /// No slot has that nameplate: a typo, an expired code, or one already used.
    UnknownNameplate,
    /// The slot already has two parties.
    Crowded,
    /// Nobody claimed the slot in time.
    Expired,
    /// The peer's key confirmation failed and it burned the slot.
    Burned,
    /// The claimer did not complete the key exchange in time: the slot is burned, and a
    /// later claim of its nameplate gets this too.
    Abandoned,
    /// The server has no room for another slot or connection.
    Busy,
    /// The message was not understood or not allowed in this state.
    Protocol,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged_snake_case_json() {
        let json = serde_json::to_string(&ClientMessage::Claim { nameplate: 7 }).unwrap();
        assert_eq!(json, r#"{"type":"claim","nameplate":7}"#);
        let msg: ServerMessage =
            serde_json::from_str(r#"{"type":"error","kind":"crowded","message":"x"}"#).unwrap();
        assert!(matches!(
            msg,
            ServerMessage::Error {
                kind: ServerErrorKind::Crowded,
                ..
            }
        ));
    }

    #[test]
    fn a_reclaim_token_crosses_but_never_shows() {
        let json = r#"{"type":"reclaim","nameplate":7,"token":"00ff"}"#;
        let message: ClientMessage = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&message).unwrap(), json);
        assert!(!format!("{message:?}").contains("00ff"));
        // An older rendezvous's `allocated`, and a newer one's field unknown today.
        let old = r#"{"type":"allocated","nameplate":7,"expires_in_secs":600}"#;
        let newer = r#"{"type":"allocated","nameplate":7,"expires_in_secs":600,"x":1}"#;
        for json in [old, newer] {
            let message: ServerMessage = serde_json::from_str(json).unwrap();
            assert!(
                matches!(message, ServerMessage::Allocated { ref reclaim, .. } if reclaim.is_empty())
            );
        }
        assert_eq!(
            serde_json::to_string(&serde_json::from_str::<ServerMessage>(old).unwrap()).unwrap(),
            old
        );
    }

    #[test]
    fn unknown_types_and_fields_are_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nuke"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"claim","nameplate":1,"x":1}"#)
                .is_err()
        );
    }
}
