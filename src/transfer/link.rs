//! What the transfer needs from a channel: ordered, reliable text and binary messages with
//! send backpressure. The WebRTC data channel implements it in `rtc::channel`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Bytes),
}

#[derive(Debug, thiserror::Error)]
#[error("the data channel closed")]
pub struct LinkClosed;

#[async_trait::async_trait]
pub trait Link: Send + Sync {
    async fn send_text(&self, text: String) -> Result<(), LinkClosed>;
    /// Resolves once the channel's buffered amount is below its high-water mark (at once if
    /// it already is). Kept apart from sending so a caller can keep reading while it waits.
    async fn writable(&self);
    /// Whether the channel is below its high-water mark right now.
    fn is_writable(&self) -> bool {
        true
    }
    /// Queues a binary message without waiting; pace with [`Link::writable`].
    async fn send_binary(&self, data: BytesMut) -> Result<(), LinkClosed>;
    /// The next message, or `None` once the channel has closed.
    async fn recv(&self) -> Option<Incoming>;
    /// The largest message the peer accepts (its SDP `max-message-size`).
    fn max_message_bytes(&self) -> usize {
        usize::MAX
    }
    /// Waits (at most `limit`) until the peer has acknowledged everything sent, so that
    /// closing afterwards loses nothing.
    async fn flush(&self, limit: Duration);
}
