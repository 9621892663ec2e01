//! The daemon's side of the rendezvous: a WebSocket that allocates or claims a nameplate
//! and then carries opaque blobs to and from the paired peer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::messages::{ClientMessage, IceServerInfo, ReclaimToken, ServerErrorKind, ServerMessage};
use super::server::MAX_MESSAGE_BYTES;
use super::tls::{CertificateProblem, Endpoint, certificate_problem};
use super::{Role, SignalError};

pub struct RendezvousClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// What the rendezvous handed out with "paired" (STUN), then with "ice" (TURN too).
    ice_servers: Vec<IceServerInfo>,
    /// Messages from the peer that arrived while waiting for the answer to "ice".
    early: std::collections::VecDeque<ServerMessage>,
    /// Which side of a transfer this connection serves (known once it allocates, claims or
    /// rejoins), so errors can say what that side should do next.
    role: Role,
    /// The nameplate this connection allocated (or reclaimed), and the token that takes it
    /// back on another connection when this one is lost.
    allocation: Option<(u32, ReclaimToken)>,
}

impl RendezvousClient {
    /// Connects to a `ws://` or `wss://` rendezvous: a URL (`wss://` then trusts the
    /// system's roots) or an [`Endpoint`] carrying its own.
    pub async fn connect(endpoint: impl Into<Endpoint>) -> Result<RendezvousClient, SignalError> {
        let endpoint = endpoint.into();
        let url = endpoint.url().to_owned();
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connector = endpoint.connector().map_err(SignalError::Tls)?;
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            // No Nagle: each signaling message is small and awaited (server.rs says more).
            true,
            Some(connector),
        )
        .await
        .map_err(|source| match certificate_problem(&source) {
            Some(CertificateProblem::WrongName) => SignalError::WrongName {
                url: url.clone(),
                source: Box::new(source),
            },
            Some(CertificateProblem::Untrusted) => SignalError::Untrusted {
                url: url.clone(),
                source: Box::new(source),
            },
            None => SignalError::Connect {
                url: url.clone(),
                source: Box::new(source),
            },
        })?;
        Ok(RendezvousClient {
            ws,
            ice_servers: Vec::new(),
            early: std::collections::VecDeque::new(),
            role: Role::Receiver,
            allocation: None,
        })
    }

    /// Asks for a nameplate; returns it with the seconds the slot will wait.
    pub async fn allocate(&mut self) -> Result<(u32, u64), SignalError> {
        self.role = Role::Sender;
        self.send(&ClientMessage::Allocate).await?;
        match self.recv().await? {
            ServerMessage::Allocated {
                nameplate,
                expires_in_secs,
                reclaim,
            } => {
                // An older rendezvous gives no token: its nameplates cannot be reclaimed.
                if !reclaim.is_empty() {
                    self.allocation = Some((nameplate, reclaim));
                }
                Ok((nameplate, expires_in_secs))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// The nameplate this connection waits in and what takes it back from another
    /// connection ([`RendezvousClient::reclaim`]), if the rendezvous gave a token.
    pub fn allocation(&self) -> Option<(u32, ReclaimToken)> {
        self.allocation.clone()
    }

    /// Waits again in `nameplate`, allocated on a connection that was lost: returns the
    /// seconds it still waits, or [`SignalError::Expired`] when it no longer does.
    pub async fn reclaim(
        &mut self,
        nameplate: u32,
        token: ReclaimToken,
    ) -> Result<u64, SignalError> {
        self.role = Role::Sender;
        self.send(&ClientMessage::Reclaim {
            nameplate,
            token: token.clone(),
        })
        .await?;
        match self.recv().await? {
            ServerMessage::Allocated {
                nameplate: again,
                expires_in_secs,
                ..
            } if again == nameplate => {
                self.allocation = Some((nameplate, token));
                Ok(expires_in_secs)
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Waits in an allocated slot until a peer claims it.
    pub async fn wait_for_peer(&mut self) -> Result<(), SignalError> {
        match self.recv().await? {
            ServerMessage::Paired { ice_servers } => {
                self.ice_servers = ice_servers;
                Ok(())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    pub async fn claim(&mut self, nameplate: u32) -> Result<(), SignalError> {
        self.role = Role::Receiver;
        self.send(&ClientMessage::Claim { nameplate }).await?;
        match self.recv().await? {
            ServerMessage::Paired { ice_servers } => {
                self.ice_servers = ice_servers;
                Ok(())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Stands for this daemon's mailboxes (rejoin channels) on this one connection.
    /// [`SignalError::Protocol`] from a rendezvous that predates `watch`.
    pub async fn watch(&mut self, channels: &[String]) -> Result<(), SignalError> {
        self.role = Role::Receiver;
        self.send(&ClientMessage::Watch {
            channels: channels.to_vec(),
        })
        .await?;
        match self.recv().await? {
            ServerMessage::Watching => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The next watched channel a sender waits on; [`SignalError::Expired`] when the
    /// rendezvous ends the watch (watch again).
    pub async fn knocked(&mut self) -> Result<String, SignalError> {
        match self.recv().await? {
            ServerMessage::Knock { channel } => Ok(channel),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Waits on a rejoin channel until the other side of the job arrives (or the server's
    /// wait expires: [`SignalError::Expired`]).
    pub async fn rejoin(&mut self, channel: &str, sender: bool) -> Result<(), SignalError> {
        self.role = if sender { Role::Sender } else { Role::Receiver };
        self.send(&ClientMessage::Rejoin {
            channel: channel.to_owned(),
            sender,
        })
        .await?;
        match self.recv().await? {
            ServerMessage::Paired { ice_servers } => {
                self.ice_servers = ice_servers;
                Ok(())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// The STUN/TURN servers the rendezvous handed out when pairing.
    pub fn ice_servers(&self) -> &[IceServerInfo] {
        &self.ice_servers
    }

    /// Asks for the pair's TURN credentials, which the rendezvous gives only once both
    /// sides relayed their key exchange: call after confirming. The peer may already
    /// be sending; what it sends meanwhile is kept for `recv_relay`.
    pub async fn fetch_ice(&mut self) -> Result<(), SignalError> {
        self.send(&ClientMessage::Ice).await?;
        loop {
            match self.read().await? {
                ServerMessage::Ice { ice_servers } => {
                    self.ice_servers = ice_servers;
                    return Ok(());
                }
                relayed @ ServerMessage::Relay { .. } => self.early.push_back(relayed),
                other => return Err(self.unexpected(&other)),
            }
        }
    }

    pub async fn relay(&mut self, body: &[u8]) -> Result<(), SignalError> {
        self.send(&ClientMessage::Relay {
            body: BASE64.encode(body),
        })
        .await
    }

    pub async fn recv_relay(&mut self) -> Result<Vec<u8>, SignalError> {
        match self.recv().await? {
            ServerMessage::Relay { body } => BASE64
                .decode(body)
                .map_err(|_| SignalError::Protocol("relay body is not base64".into())),
            other => Err(self.unexpected(&other)),
        }
    }

    pub async fn burn(&mut self) {
        let _ = self.send(&ClientMessage::Burn).await;
        let _ = self.ws.close(None).await;
    }

    /// Closes the websocket properly: our close frame, then whatever the rendezvous still
    /// sends until its own close (at most [`super::session::CLOSE_WAIT`]), so the messages
    /// we sent last are read before the connection goes.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let drained = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(super::session::CLOSE_WAIT, drained).await;
    }

    async fn send(&mut self, message: &ClientMessage) -> Result<(), SignalError> {
        let json = serde_json::to_string(message)
            .map_err(|e| SignalError::Protocol(format!("cannot encode message: {e}")))?;
        self.ws
            .send(Message::text(json))
            .await
            .map_err(|_| SignalError::RendezvousClosed)
    }

    async fn recv(&mut self) -> Result<ServerMessage, SignalError> {
        match self.early.pop_front() {
            Some(message) => Ok(message),
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Result<ServerMessage, SignalError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).map_err(|_| {
                        SignalError::Protocol(
                            "rendezvous sent a message p2pd does not understand".into(),
                        )
                    });
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                _ => return Err(SignalError::RendezvousClosed),
            }
        }
    }

    /// What an answer other than the expected one means for this side.
    fn unexpected(&self, message: &ServerMessage) -> SignalError {
        let role = self.role;
        match message {
            ServerMessage::PeerGone => SignalError::PeerGone,
            ServerMessage::Error { kind, .. } => match kind {
                ServerErrorKind::UnknownNameplate => SignalError::UnknownCode,
                ServerErrorKind::Expired => SignalError::Expired,
                ServerErrorKind::Crowded => SignalError::Crowded,
                ServerErrorKind::Burned => SignalError::WrongCode { role },
                ServerErrorKind::Abandoned => SignalError::Abandoned { role },
                ServerErrorKind::Busy => SignalError::Busy,
                ServerErrorKind::Protocol => {
                    SignalError::Protocol("rendezvous rejected a message".into())
                }
            },
            _ => SignalError::Protocol("rendezvous sent a message out of turn".into()),
        }
    }
}
