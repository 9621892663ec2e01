//! The channel binding, the first exchange on a new channel: both sides prove the PAKE key
//! over the DTLS certificates they actually see, whatever the WebRTC library checked. A
//! peer that cannot (an interceptor between two honest sides sees other certificates than
//! either) is refused before a name or a byte of a file has crossed.

use super::TransferError;
use super::link::Link;
use crate::rendezvous::Role;
use crate::rendezvous::crypto::{channel_proof, verify_channel_proof};

/// What the binding needs from the transport under a [`Link`]: the fingerprints of the two
/// certificates its encryption was set up with.
#[async_trait::async_trait]
pub trait Certificates: Send + Sync {
    /// (ours, the peer's) SHA-256 fingerprints; `None` if the handshake has not completed.
    async fn certificates(&self) -> Option<(String, String)>;
}

/// Proves `binding_key` over `transport`'s certificates on `link`, and checks the peer's
/// proof.
pub async fn authenticate(
    transport: &dyn Certificates,
    link: &dyn Link,
    binding_key: &[u8; 32],
    role: Role,
) -> Result<(), TransferError> {
    let Some((ours, theirs)) = transport.certificates().await else {
        return Err(TransferError::Unauthenticated);
    };
    let proof = channel_proof(binding_key, role, &ours, &theirs);
    super::exchange_proofs(link, &proof, |peer| {
        verify_channel_proof(binding_key, role, &ours, &theirs, peer)
    })
    .await
}
