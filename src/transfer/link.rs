//! What the transfer needs from a channel: ordered, reliable text and binary messages with
//! send backpressure. The WebRTC data channel implements it in `rtc::channel`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Bytes),
    /// The peer broke the link's own framing (see `stripe`): nothing more can be trusted.
    Broken(String),
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
    /// Bytes the link appends to each binary message: a sender that allocates this much
    /// spare capacity spares the link a copy.
    fn spare_capacity(&self) -> usize {
        0
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
