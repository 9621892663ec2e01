//! The CLI's connection to the daemon.

use std::path::Path;

use tokio::net::UnixStream;

use super::codec::{CodecError, read_frame, write_frame};
use super::messages::{ClientFrame, PROTOCOL_VERSION, Request, ServerFrame, Speaker};

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error(
        "p2pd is not running (no daemon at {path}): start it with `p2pd` or `systemctl --user start p2pd`"
    )]
    NotRunning { path: String },
    #[error("cannot connect to p2pd at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "p2pd speaks protocol version {0}, this p2p speaks {PROTOCOL_VERSION}: use matching versions"
    )]
    Version(u32),
    #[error(
        "the socket {path} is held by another user's process (uid {uid}), not by your p2pd: nothing was sent to it; remove it, or pass --socket PATH"
    )]
    Impostor { path: String, uid: u32 },
    #[error(
        "{path} did not answer as a p2pd (it sent a client's hello back): stop whatever listens there, or pass --socket PATH"
    )]
    NotDaemon { path: String },
    #[error("{0}")]
    Refused(String),
    #[error("p2pd closed the connection")]
    Closed,
    #[error("talking to p2pd failed")]
    Codec(#[from] CodecError),
}

/// The daemon runs as the user who drives it; root may run it for them. Anyone else is not
/// our daemon.
fn trusted_peer(uid: u32) -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    uid == unsafe { libc::getuid() } || uid == 0
}

pub struct IpcClient {
    stream: UnixStream,
}

impl IpcClient {
    pub async fn connect(path: &Path) -> Result<IpcClient, IpcError> {
        let shown = path.display().to_string();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    IpcError::NotRunning {
                        path: shown.clone(),
                    }
                }
                _ => IpcError::Connect {
                    path: shown.clone(),
                    source,
                },
            })?;
        // Before a byte leaves: whoever can swap the socket file could be listening in the
        // daemon's place, and the next request may carry a code (issue #23).
        let uid = stream.peer_cred().map_err(|source| IpcError::Connect {
            path: shown.clone(),
            source,
        })?;
        if !trusted_peer(uid.uid()) {
            return Err(IpcError::Impostor {
                path: shown,
                uid: uid.uid(),
            });
        }
        let mut client = IpcClient { stream };
        let hello = ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            from: Speaker::Client,
        };
        // A refusing daemon writes its reason and hangs up, possibly before our hello
        // lands: read the reason even when the write failed.
        let wrote = write_frame(&mut client.stream, &hello).await;
        let reply = match (wrote, client.next().await) {
            (_, Ok(Some(frame))) => frame,
            (Err(error), _) => return Err(error.into()),
            (Ok(()), Ok(None)) => return Err(IpcError::Closed),
            (Ok(()), Err(error)) => return Err(error),
        };
        match reply {
            ServerFrame::Hello { version, .. } if version != PROTOCOL_VERSION => {
                Err(IpcError::Version(version))
            }
            ServerFrame::Hello {
                from: Speaker::Daemon,
                ..
            } => Ok(client),
            ServerFrame::Hello {
                from: Speaker::Client,
                ..
            } => Err(IpcError::NotDaemon { path: shown }),
            ServerFrame::Error { message, .. } => Err(IpcError::Refused(message)),
            _ => Err(IpcError::Closed),
        }
    }

    pub async fn send(&mut self, request: Request) -> Result<(), IpcError> {
        write_frame(&mut self.stream, &ClientFrame::Request(request)).await?;
        Ok(())
    }

    /// The next frame from the daemon, `None` when it closed the connection.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, IpcError> {
        Ok(read_frame(&mut self.stream).await?)
    }

    /// Sends `request` and returns the first reply.
    pub async fn call(&mut self, request: Request) -> Result<ServerFrame, IpcError> {
        self.send(request).await?;
        self.next().await?.ok_or(IpcError::Closed)
    }
}
