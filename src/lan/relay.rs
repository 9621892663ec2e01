//! A session's relay over a direct LAN connection: how two paired daemons on one network
//! reach each other without the rendezvous. Frames as `signal` frames them; what travels
//! is the session's sealed blobs, so the connection itself needs no protection.

use tokio::net::TcpStream;

use super::signal::{self, SignalError as LanError};
use crate::rendezvous::SignalError;
use crate::rendezvous::session::Relay;

pub struct LanRelay {
    stream: TcpStream,
}

impl LanRelay {
    pub fn new(stream: TcpStream) -> LanRelay {
        LanRelay { stream }
    }
}

fn lost(error: LanError) -> SignalError {
    match error {
        LanError::TooLarge(_) | LanError::Malformed => {
            SignalError::Protocol("the nearby device sent an oversized message".into())
        }
        LanError::Closed | LanError::Io(_) => SignalError::PeerGone,
    }
}

#[async_trait::async_trait]
impl Relay for LanRelay {
    async fn relay(&mut self, body: &[u8]) -> Result<(), SignalError> {
        signal::write_frame(&mut self.stream, body)
            .await
            .map_err(lost)
    }

    async fn recv_relay(&mut self) -> Result<Vec<u8>, SignalError> {
        signal::read_frame(&mut self.stream).await.map_err(lost)
    }

    async fn close(self: Box<Self>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = self.stream;
        let _ = stream.shutdown().await;
        // Until the other end closes too: dropping now would reset the connection if it
        // still writes, and lose what it had not read of ours.
        let drained = async {
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(crate::rendezvous::session::CLOSE_WAIT, drained).await;
    }
}
