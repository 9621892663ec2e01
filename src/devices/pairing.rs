//! The pairing exchange, after SPAKE2 and key confirmation on a pairing code (with its own
//! SPAKE2 identities, so a pairing code can never complete a transfer's exchange or the
//! reverse): each side sends its device name and identity key, signed over the session's
//! binding key, then each person's decision. Pure: messages and checks.

use serde::{Deserialize, Serialize};

use super::identity::{Identity, verify};
use super::registry::valid_device_name;
use crate::rendezvous::Role;

/// SPAKE2 identities of a pairing: the side that printed the code, the side that typed it.
pub const PAIR_IDENTITIES: (&[u8], &[u8]) = (b"p2pd/1 pair initiator", b"p2pd/1 pair joiner");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PairMessage {
    /// Who this side is: its name, its Ed25519 public key (hex) and its signature (hex)
    /// over [`transcript`].
    Device {
        name: String,
        public_key: String,
        signature: String,
    },
    /// The person on this side said yes or no.
    Decision { accept: bool },
    /// This side's person is still comparing: keeps the rendezvous, which drops a pairing
    /// that is silent for two minutes, from ending the ceremony. Ignored.
    Waiting,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairError {
    #[error("the other device sent a malformed pairing message")]
    Malformed,
    #[error(
        "the other device's name is not usable (1 to 64 characters, no control characters or '/')"
    )]
    BadName,
    #[error(
        "the other device could not prove it holds the identity key it announced (possible interception): not paired"
    )]
    BadSignature,
}

/// What a side signs: `"p2pd/1 pairing\0" ‖ role ‖ binding key ‖ u64 len ‖ name ‖ public
/// key`. The binding key comes from this session's SPAKE2, so a signature cannot be
/// replayed into another pairing, and only the holders of the code have it.
pub fn transcript(
    binding_key: &[u8; 32],
    role: Role,
    name: &str,
    public_key: &[u8; 32],
) -> Vec<u8> {
    let label: &[u8] = match role {
        Role::Sender => b"initiator",
        Role::Receiver => b"joiner",
    };
    [
        b"p2pd/1 pairing\0".as_slice(),
        label,
        binding_key,
        &(name.len() as u64).to_be_bytes(),
        name.as_bytes(),
        public_key,
    ]
    .concat()
}

/// This side's `Device` message.
pub fn introduce(
    identity: &Identity,
    name: &str,
    binding_key: &[u8; 32],
    role: Role,
) -> PairMessage {
    let public_key = identity.public_key();
    let signature = identity.sign(&transcript(binding_key, role, name, &public_key));
    PairMessage::Device {
        name: name.to_owned(),
        public_key: hex::encode(public_key),
        signature: hex::encode(signature),
    }
}

/// The other side's name and key, once its `Device` message checks out.
pub fn check_peer(
    message: &PairMessage,
    binding_key: &[u8; 32],
    peer_role: Role,
) -> Result<(String, [u8; 32]), PairError> {
    let PairMessage::Device {
        name,
        public_key,
        signature,
    } = message
    else {
        return Err(PairError::Malformed);
    };
    if !valid_device_name(name) {
        return Err(PairError::BadName);
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key, &mut key).map_err(|_| PairError::Malformed)?;
    let signature = hex::decode(signature).map_err(|_| PairError::Malformed)?;
    if !verify(
        &key,
        &transcript(binding_key, peer_role, name, &key),
        &signature,
    ) {
        return Err(PairError::BadSignature);
    }
    Ok((name.clone(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        (dir, identity)
    }

    #[test]
    fn an_introduction_checks_out_only_for_its_session_role_and_name() {
        let (_d, laptop) = identity();
        let binding = [7u8; 32];
        let hello = introduce(&laptop, "laptop", &binding, Role::Sender);
        assert_eq!(
            check_peer(&hello, &binding, Role::Sender).unwrap(),
            ("laptop".to_owned(), laptop.public_key())
        );
        // Another session (another code), the other role: refused.
        assert_eq!(
            check_peer(&hello, &[8u8; 32], Role::Sender),
            Err(PairError::BadSignature)
        );
        assert_eq!(
            check_peer(&hello, &binding, Role::Receiver),
            Err(PairError::BadSignature)
        );
        // A renamed introduction, or someone else's key under it: refused.
        let PairMessage::Device {
            public_key,
            signature,
            ..
        } = hello.clone()
        else {
            unreachable!()
        };
        let renamed = PairMessage::Device {
            name: "phone".into(),
            public_key: public_key.clone(),
            signature: signature.clone(),
        };
        assert_eq!(
            check_peer(&renamed, &binding, Role::Sender),
            Err(PairError::BadSignature)
        );
        let (_e, other) = identity();
        let swapped = PairMessage::Device {
            name: "laptop".into(),
            public_key: hex::encode(other.public_key()),
            signature,
        };
        assert_eq!(
            check_peer(&swapped, &binding, Role::Sender),
            Err(PairError::BadSignature)
        );
        let bad_name = introduce(&laptop, "a/b", &binding, Role::Sender);
        assert_eq!(
            check_peer(&bad_name, &binding, Role::Sender),
            Err(PairError::BadName)
        );
        assert_eq!(
            check_peer(
                &PairMessage::Decision { accept: true },
                &binding,
                Role::Sender
            ),
            Err(PairError::Malformed)
        );
    }

    #[test]
    fn messages_are_tagged_json() {
        let json = serde_json::to_string(&PairMessage::Decision { accept: false }).unwrap();
        assert_eq!(json, r#"{"type":"decision","accept":false}"#);
        assert!(
            serde_json::from_str::<PairMessage>(r#"{"type":"decision","accept":true,"x":1}"#)
                .is_err()
        );
    }
}
