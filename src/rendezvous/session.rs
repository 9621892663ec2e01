//! Pairing over the rendezvous (or another [`Relay`]): SPAKE2, key confirmation, then
//! sealed messages only.

use super::SignalError;
use super::client::RendezvousClient;
use super::code::Code;
use super::crypto::{
    CryptoError, Pake, RESUME_NONCE_BYTES, Role, SealedChannel, Secret, SessionKeys,
};
use super::messages::IceServerInfo;

/// How long closing a [`Relay`] waits for the other end to close too. Dropping the socket
/// right after the last message lets a write from the other end reset the connection,
/// and a reset discards what that end had not read yet: a refusal sent just before
/// closing went missing that way (CI, issue #23's "cannot save" test).
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An ordered pipe of opaque blobs to the peer daemon, which a [`Session`] seals: the
/// rendezvous's relay, or a direct LAN connection (`lan::relay`).
#[async_trait::async_trait]
pub trait Relay: Send {
    async fn relay(&mut self, body: &[u8]) -> Result<(), SignalError>;
    async fn recv_relay(&mut self) -> Result<Vec<u8>, SignalError>;
    /// STUN/TURN servers that came with the pairing (the rendezvous hands some out).
    fn ice_servers(&self) -> &[IceServerInfo] {
        &[]
    }
    /// Once keys are confirmed: fetches what the pairing's `ice_servers` lack until then
    /// (the rendezvous's TURN credentials).
    async fn fetch_ice(&mut self) -> Result<(), SignalError> {
        Ok(())
    }
    /// Tells the other side the code was wrong, where that means anything, and closes.
    async fn burn(&mut self) {}
    /// Closes, waiting (at most [`CLOSE_WAIT`]) for the other end to have read what was
    /// sent and closed as well.
    async fn close(self: Box<Self>);
}

#[async_trait::async_trait]
impl Relay for RendezvousClient {
    async fn relay(&mut self, body: &[u8]) -> Result<(), SignalError> {
        RendezvousClient::relay(self, body).await
    }
    async fn recv_relay(&mut self) -> Result<Vec<u8>, SignalError> {
        RendezvousClient::recv_relay(self).await
    }
    fn ice_servers(&self) -> &[IceServerInfo] {
        RendezvousClient::ice_servers(self)
    }
    async fn fetch_ice(&mut self) -> Result<(), SignalError> {
        RendezvousClient::fetch_ice(self).await
    }
    async fn burn(&mut self) {
        RendezvousClient::burn(self).await
    }
    async fn close(self: Box<Self>) {
        RendezvousClient::close(*self).await
    }
}

/// An authenticated, encrypted, ordered message pipe to the peer daemon.
pub struct Session {
    client: Box<dyn Relay>,
    sealed: SealedChannel,
}

impl Session {
    /// Runs the PAKE with `code` over an already paired `client`. A wrong code burns the
    /// slot on the server and fails here with [`SignalError::WrongCode`].
    pub async fn establish(
        client: RendezvousClient,
        role: Role,
        code: &Code,
    ) -> Result<Session, SignalError> {
        Session::establish_with(client, role, code, None).await
    }

    /// `establish` over another relay: a daemon on the LAN carrying its rendezvous's.
    pub async fn establish_over(
        relay: Box<dyn Relay>,
        role: Role,
        code: &Code,
    ) -> Result<Session, SignalError> {
        Session::establish_relayed(relay, role, code, None).await
    }

    /// `establish` with other SPAKE2 identities (pairing's), or a transfer's when `None`.
    pub async fn establish_with(
        client: RendezvousClient,
        role: Role,
        code: &Code,
        identities: Option<(&[u8], &[u8])>,
    ) -> Result<Session, SignalError> {
        Session::establish_relayed(Box::new(client), role, code, identities).await
    }

    async fn establish_relayed(
        mut client: Box<dyn Relay>,
        role: Role,
        code: &Code,
        identities: Option<(&[u8], &[u8])>,
    ) -> Result<Session, SignalError> {
        let (pake, message) = match identities {
            Some(ids) => Pake::start_with(role, code, ids),
            None => Pake::start(role, code),
        };
        client.relay(&message).await?;
        let peer_message = client.recv_relay().await?;
        let keys = match pake.finish(&peer_message) {
            Ok(keys) => keys,
            Err(_) => {
                client.burn().await;
                return Err(SignalError::WrongCode { role });
            }
        };
        client.relay(&keys.our_confirmation()).await?;
        let peer_tag = client.recv_relay().await?;
        match keys.confirm(&peer_tag) {
            Ok(sealed) => {
                client.fetch_ice().await?;
                Ok(Session { client, sealed })
            }
            Err(CryptoError::WrongCode | CryptoError::BadPakeMessage | CryptoError::BadSeal) => {
                client.burn().await;
                Err(SignalError::WrongCode { role })
            }
        }
    }

    /// Opens a later session of a job over a `client` paired on its rejoin channel: both
    /// sides send a fresh nonce, derive keys from the resume secret and confirm them. A
    /// peer without the secret fails here with [`SignalError::WrongCode`].
    pub async fn resume(
        client: RendezvousClient,
        role: Role,
        secret: &[u8; 32],
    ) -> Result<Session, SignalError> {
        Session::from_secret(Box::new(client), role, |sender, receiver| {
            SessionKeys::resumed(secret, role, sender, receiver)
        })
        .await
    }

    /// Opens a session between two paired devices over a `client` paired at a mailbox:
    /// like [`Session::resume`], keyed from the pair secret, with a resume secret of its
    /// own. A peer without the pair secret fails here with [`SignalError::WrongCode`].
    pub async fn between_devices(
        client: Box<dyn Relay>,
        role: Role,
        pair_secret: &[u8; 32],
        receiver_key: &[u8; 32],
    ) -> Result<Session, SignalError> {
        Session::from_secret(client, role, |sender, receiver| {
            SessionKeys::between_devices(pair_secret, role, (sender, receiver), receiver_key)
        })
        .await
    }

    /// Both sides send a fresh nonce; `keys` makes the session's keys from them (the
    /// sender's first), and both confirm.
    async fn from_secret(
        mut client: Box<dyn Relay>,
        role: Role,
        keys: impl FnOnce(&[u8], &[u8]) -> SessionKeys,
    ) -> Result<Session, SignalError> {
        use rand::RngCore;
        let mut ours = [0u8; RESUME_NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut ours);
        client.relay(&ours).await?;
        let theirs = client.recv_relay().await?;
        if theirs.len() != RESUME_NONCE_BYTES {
            return Err(SignalError::Protocol("bad session nonce".into()));
        }
        let (sender_nonce, receiver_nonce) = match role {
            Role::Sender => (&ours[..], &theirs[..]),
            Role::Receiver => (&theirs[..], &ours[..]),
        };
        let keys = keys(sender_nonce, receiver_nonce);
        client.relay(&keys.our_confirmation()).await?;
        let peer_tag = client.recv_relay().await?;
        match keys.confirm(&peer_tag) {
            Ok(sealed) => {
                client.fetch_ice().await?;
                Ok(Session { client, sealed })
            }
            Err(_) => Err(SignalError::WrongCode { role }),
        }
    }

    /// STUN/TURN servers the rendezvous handed out for this pairing.
    pub fn ice_servers(&self) -> &[super::messages::IceServerInfo] {
        self.client.ice_servers()
    }

    /// The secret that later sessions of this job are opened with.
    /// Wiped on drop, never printed; `&secret` is a `&[u8; 32]`.
    pub fn resume_secret(&self) -> Secret {
        self.sealed.resume_secret()
    }

    /// The key both sides use to prove, on the data channel, that they hold this session.
    pub fn binding_key(&self) -> Secret {
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
