//! Frames on the control socket: a big-endian u32 length, then that many bytes of postcard.
//! The pure encode/decode halves are here; `read_frame`/`write_frame` are the thin I/O.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted at all. Job lists travel in chunks (`super::delta`), so frames
/// stay far below it; the cap only bounds what one header can make us allocate.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Largest frame the daemon reads from a client: requests are small (a send of 10 000
/// paths is well under 1 MiB), so a client gets far less room than the daemon's updates.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame")]
    Malformed(#[source] postcard::Error),
    #[error("the peer was too slow to send a whole frame")]
    TimedOut,
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let body = postcard::to_stdvec(value).map_err(CodecError::Malformed)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Checks a length header before any body is read, so a hostile length allocates nothing.
pub fn body_len(header: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(body).map_err(CodecError::Malformed)
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<T>, CodecError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(header)?];
    reader.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

/// Like [`read_frame`], but a frame, once its first byte arrived, must be complete within
/// `frame_limit`, and the first byte must come within `idle_limit` if one is given. A
/// client trickling one byte a second, or stopping mid-frame, is cut off.
pub async fn read_frame_within<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    idle_limit: Option<Duration>,
    frame_limit: Duration,
) -> Result<Option<T>, CodecError> {
    let mut header = [0u8; 4];
    let first = async {
        match reader.read(&mut header[..1]).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(CodecError::Io(e)),
        }
    };
    let started = match idle_limit {
        Some(limit) => tokio::time::timeout(limit, first)
            .await
            .map_err(|_| CodecError::TimedOut)??,
        None => first.await?,
    };
    if !started {
        return Ok(None);
    }
    let rest = async {
        reader.read_exact(&mut header[1..]).await?;
        let len = body_len(header)?;
        if len > MAX_REQUEST_BYTES {
            return Err(CodecError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        decode(&body)
    };
    tokio::time::timeout(frame_limit, rest)
        .await
        .map_err(|_| CodecError::TimedOut)?
        .map(Some)
}

pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &T,
) -> Result<(), CodecError> {
    writer.write_all(&encode(value)?).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::messages::{ClientFrame, PROTOCOL_VERSION, Request, ServerFrame, Speaker};

    #[test]
    fn an_echoed_client_hello_does_not_read_as_the_daemons() {
        let client = ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            from: Speaker::Client,
        };
        let daemon = ServerFrame::Hello {
            version: PROTOCOL_VERSION,
            from: Speaker::Daemon,
        };
        let (client, daemon) = (encode(&client).unwrap(), encode(&daemon).unwrap());
        assert_ne!(client, daemon);
        // What a socket that echoes the client's bytes makes the client read.
        assert_eq!(
            decode::<ServerFrame>(&client[4..]).unwrap(),
            ServerFrame::Hello {
                version: PROTOCOL_VERSION,
                from: Speaker::Client,
            }
        );
    }

    #[test]
    fn version_8s_hello_is_still_read_for_its_version() {
        // Version 8's hello was `[variant 0, version]`; a daemon answers it with its own.
        assert!(decode::<ClientFrame>(&[0, 8]).is_err());
        let ours = encode(&ServerFrame::Hello {
            version: PROTOCOL_VERSION,
            from: Speaker::Daemon,
        })
        .unwrap();
        // Version 8's client reads the leading version and ignores the rest.
        assert_eq!(ours[4..6], [0, PROTOCOL_VERSION as u8]);
    }

    #[test]
    fn frames_round_trip() {
        let frame = ClientFrame::Request(Request::Receive {
            code: "7-orbit-lantern".into(),
            download_dir: Some("/tmp/x".into()),
            accept: true,
            follow: false,
            path: crate::ipc::messages::PathPolicy::RequireDirect,
        });
        let bytes = encode(&frame).unwrap();
        let len = body_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(decode::<ClientFrame>(&bytes[4..]).unwrap(), frame);
    }

    #[test]
    fn oversized_headers_are_refused_before_reading() {
        assert!(matches!(
            body_len((MAX_FRAME_BYTES as u32 + 1).to_be_bytes()),
            Err(CodecError::TooLarge(_))
        ));
        assert!(body_len((MAX_FRAME_BYTES as u32).to_be_bytes()).is_ok());
    }

    #[test]
    fn garbage_bodies_are_errors() {
        assert!(decode::<ClientFrame>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<ClientFrame>(&[]).is_err());
    }

    #[tokio::test]
    async fn stream_helpers_handle_eof() {
        let mut bytes = encode(&ClientFrame::Hello {
            version: 1,
            from: Speaker::Client,
        })
        .unwrap();
        let mut reader = bytes.as_slice();
        assert_eq!(
            read_frame::<ClientFrame, _>(&mut reader).await.unwrap(),
            Some(ClientFrame::Hello {
                version: 1,
                from: Speaker::Client,
            })
        );
        assert_eq!(
            read_frame::<ClientFrame, _>(&mut reader).await.unwrap(),
            None
        );
        bytes.truncate(bytes.len() - 1);
        let mut short = bytes.as_slice();
        assert!(read_frame::<ClientFrame, _>(&mut short).await.is_err());
    }
}
