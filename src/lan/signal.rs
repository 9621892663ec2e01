//! A nearby send's signaling, over one TCP connection on the LAN: the sender's offer (the
//! same base64 description `--manual` uses) and its display name, the receiver's answer
//! or refusal. Frames are a big-endian `u32` length and that much JSON, at most
//! [`MAX_FRAME_BYTES`]. Nothing here is trusted: the short authentication string both
//! people compare afterwards is what authenticates the channel.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side reads: a description with many candidates is a few KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NearbyMessage {
    /// The sender's name as it announces it, and its offer.
    Offer { name: String, description: String },
    /// The receiver's answer; the channel follows.
    Answer { description: String },
    /// The receiver takes no offer now, and says why.
    Refused { reason: String },
    /// A paired device's first frame instead of an offer: a fresh nonce and a tag only
    /// the device it looks for recognises (hex; PROTOCOL.md §4c).
    Device { nonce: String, tag: String },
    /// Every daemon's reply to a `Device` ask, whoever it is meant for: fresh random
    /// bytes (hex) that only the pairing's holder can answer, so a recorded ask played
    /// again gets nothing. (A daemon from before challenges answers `Here` at once.)
    Challenge { challenge: String },
    /// The asker's answer to the challenge (hex).
    Proof { proof: String },
    /// The receiver listens at that mailbox and the proof checked out: the session
    /// follows on this connection, as raw frames ([`write_frame`], [`read_frame`]). Any
    /// other receiver closes.
    Here,
    /// A receiver whose rendezvous does not know a code asks whether this daemon's
    /// rendezvous holds its nameplate (PROTOCOL.md §4e).
    Code { nameplate: u32 },
    /// It did, and this daemon claimed it there for the asker: the rendezvous's relays
    /// follow on this connection as raw frames. Otherwise `Refused`.
    Claimed,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("the nearby device closed the connection")]
    Closed,
    #[error("the nearby device sent {0} bytes in one message, more than {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("the nearby device sent a message p2pd does not understand")]
    Malformed,
    #[error("cannot talk to the nearby device: {0}")]
    Io(#[from] std::io::Error),
}

/// A message as it travels (pure).
pub fn encode(message: &NearbyMessage) -> Vec<u8> {
    let json = serde_json::to_vec(message).unwrap_or_default();
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&json);
    frame
}

pub async fn write(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &NearbyMessage,
) -> Result<(), SignalError> {
    stream.write_all(&encode(message)).await?;
    stream.flush().await?;
    Ok(())
}

pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> Result<NearbyMessage, SignalError> {
    let body = read_frame(stream).await?;
    serde_json::from_slice(&body).map_err(|_| SignalError::Malformed)
}

/// One frame of bytes, as [`write`] frames a message.
pub async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    body: &[u8],
) -> Result<(), SignalError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(SignalError::TooLarge(body.len()));
    }
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    Ok(())
}

fn closed(error: std::io::Error) -> SignalError {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => SignalError::Closed,
        _ => SignalError::Io(error),
    }
}

pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, SignalError> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.map_err(closed)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(SignalError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(closed)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_frames_are_named() {
        let offer = NearbyMessage::Offer {
            name: "laptop".into(),
            description: "eyJ0eXBlIjoib2ZmZXIifQ==".into(),
        };
        let bytes = encode(&offer);
        assert_eq!(read(&mut bytes.as_slice()).await.unwrap(), offer);
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(
            read(&mut huge.as_slice()).await,
            Err(SignalError::TooLarge(_))
        ));
        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{x}");
        assert!(matches!(
            read(&mut junk.as_slice()).await,
            Err(SignalError::Malformed)
        ));
        assert!(matches!(
            read(&mut [0u8, 0].as_slice()).await,
            Err(SignalError::Closed)
        ));
        let mut raw = Vec::new();
        write_frame(&mut raw, b"\x00sealed").await.unwrap();
        assert_eq!(
            read_frame(&mut raw.as_slice()).await.unwrap(),
            b"\x00sealed"
        );
        assert!(matches!(
            write_frame(&mut Vec::new(), &vec![0; MAX_FRAME_BYTES + 1]).await,
            Err(SignalError::TooLarge(_))
        ));
        let refused = encode(&NearbyMessage::Refused {
            reason: "busy".into(),
        });
        assert_eq!(&refused[4..], br#"{"type":"refused","reason":"busy"}"#);
    }
}
