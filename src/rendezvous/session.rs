//! Pairing over the rendezvous: SPAKE2, key confirmation, then sealed messages only.

use super::SignalError;
use super::client::RendezvousClient;
use super::code::Code;
use super::crypto::{CryptoError, Pake, Role, SealedChannel};

/// An authenticated, encrypted, ordered message pipe to the peer daemon.
pub struct Session {
    client: RendezvousClient,
    sealed: SealedChannel,
}

impl Session {
    /// Runs the PAKE with `code` over an already paired `client`. A wrong code burns the
    /// slot on the server and fails here with [`SignalError::WrongCode`].
    pub async fn establish(
        mut client: RendezvousClient,
        role: Role,
        code: &Code,
    ) -> Result<Session, SignalError> {
        let (pake, message) = Pake::start(role, code);
        client.relay(&message).await?;
        let peer_message = client.recv_relay().await?;
        let keys = match pake.finish(&peer_message) {
            Ok(keys) => keys,
            Err(_) => {
                client.burn().await;
                return Err(SignalError::WrongCode);
            }
        };
        client.relay(&keys.our_confirmation()).await?;
        let peer_tag = client.recv_relay().await?;
        match keys.confirm(&peer_tag) {
            Ok(sealed) => Ok(Session { client, sealed }),
            Err(CryptoError::WrongCode | CryptoError::BadPakeMessage | CryptoError::BadSeal) => {
                client.burn().await;
                Err(SignalError::WrongCode)
            }
        }
    }

    /// The key both sides use to prove, on the data channel, that they hold this session.
    pub fn binding_key(&self) -> [u8; 32] {
        self.sealed.binding_key()
    }

    pub fn role(&self) -> super::Role {
        self.sealed.role()
    }

    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), SignalError> {
        let blob = self.sealed.seal(plaintext);
        self.client.relay(&blob).await
    }

    pub async fn recv(&mut self) -> Result<Vec<u8>, SignalError> {
        let blob = self.client.recv_relay().await?;
        self.sealed.open(&blob).map_err(|_| SignalError::BadSeal)
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}
