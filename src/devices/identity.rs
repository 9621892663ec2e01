//! This daemon's long-term identity: an Ed25519 key pair made on first start in the state
//! directory (readable by this user only), and the fingerprint people compare (`p2p id`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::daemon::record::write_private;

/// The file, in the state directory, that holds the key pair's 32-byte secret seed (hex).
pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or create the identity key {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the identity key {} is readable by other users: run chmod 600 on it (and treat it as stolen if others could read it: see docs/SECURITY.md)",
        .0.display()
    )]
    Exposed(PathBuf),
    #[error("the identity key {} is damaged (not 32 bytes of hex): restore it from a backup, or remove it to make a new identity (paired devices then need pairing again)", .0.display())]
    Damaged(PathBuf),
}

/// The key pair. The secret half is wiped on drop (ed25519-dalek's `zeroize`).
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// Loads the identity from `state_dir`, or makes one there on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let io_error = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let mode = std::fs::metadata(&path)
                    .map_err(io_error)?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Exposed(path));
                }
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| IdentityError::Damaged(path.clone()))?;
                let mut seed = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), seed.as_mut())
                    .map_err(|_| IdentityError::Damaged(path.clone()))?;
                Ok(Identity {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let text = Zeroizing::new(format!("{}\n", hex::encode(key.to_bytes())));
                write_private(&path, text.as_bytes()).map_err(io_error)?;
                Ok(Identity { key })
            }
            Err(error) => Err(io_error(error)),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// Whether `signature` is `public_key`'s over `message` (strict verification: no
/// malleable or small-order forms).
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (
        VerifyingKey::from_bytes(public_key),
        Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok() && key.verify(message, &signature).is_ok()
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// What people compare: `SHA-256("p2pd/1 identity\0" ‖ public key)`, its first 15 bytes in
/// base32 (RFC 4648 alphabet), six groups of four: `ABCD-EFGH-IJKL-MNOP-QRST-UVWX`. 120
/// bits: no one makes a second key with the same fingerprint.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"p2pd/1 identity\0");
    hash.update(public_key);
    let digest = hash.finalize();
    let mut chars = Vec::with_capacity(24);
    for group in digest[..15].chunks(5) {
        let mut bits = 0u64;
        for byte in group {
            bits = (bits << 8) | u64::from(*byte);
        }
        for i in (0..8).rev() {
            chars.push(BASE32[((bits >> (i * 5)) & 31) as usize]);
        }
    }
    chars
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        let signature = first.sign(b"hello");
        assert!(verify(&again.public_key(), b"hello", &signature));
        assert!(!verify(&again.public_key(), b"hullo", &signature));
        assert!(!verify(&again.public_key(), b"hello", &signature[..63]));
    }

    #[test]
    fn an_exposed_or_damaged_key_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Identity::load_or_create(dir.path()).err().unwrap();
        assert!(matches!(error, IdentityError::Exposed(_)));
        assert!(error.to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex").unwrap();
        let error = Identity::load_or_create(dir.path()).err().unwrap();
        assert!(matches!(error, IdentityError::Damaged(_)), "{error}");
    }

    #[test]
    fn fingerprints_are_six_groups_of_base32_and_follow_the_key() {
        let a = fingerprint(&[1u8; 32]);
        assert_eq!(a.len(), 29);
        assert_eq!(a.split('-').count(), 6);
        assert!(a.chars().all(|c| c == '-' || BASE32.contains(&(c as u8))));
        assert_ne!(a, fingerprint(&[2u8; 32]));
        // Computed independently: base64.b32encode(sha256(b"p2pd/1 identity\0" + bytes([1]*32)).digest()[:15])
        assert_eq!(a, "IPS5-SXMS-RZP2-37KU-BNBS-BH7O");
    }
}
