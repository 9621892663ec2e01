//! One data channel as a [`Link`]: a pump task polls the channel (it must always be
//! polled), forwards messages into a bounded queue and tracks the buffered-amount events.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use crate::transfer::link::{Incoming, Link, LinkClosed};

/// Pause sending above this many buffered bytes...
pub const BUFFERED_HIGH_BYTES: u32 = 8 * 1024 * 1024;
/// ...and resume once the channel drains below this.
pub const BUFFERED_LOW_BYTES: u32 = 4 * 1024 * 1024;
/// Messages received but not yet consumed (2 MiB of 64 KiB chunks, at most 8 MiB of the
/// largest messages). When it is full the pump waits; once the driver's own queue is full
/// too it stops reading the SCTP stream and the association's receive window closes.
pub const INBOUND_QUEUE_MESSAGES: usize = 32;
/// Messages the WebRTC stack itself may hold for a channel before SCTP's window starts to
/// close, none of it configurable: rtc 0.21's pipeline backlog
/// (`SCTP_PIPELINE_READ_BACKLOG_LIMIT`, 256), webrtc 0.21's driver → channel queue
/// (`DRIVER_TO_DATA_CHANNEL_EVENT_CHANNEL_CAPACITY`, 256) and one drain of the pipeline the
/// driver keeps when that queue is full (up to 256). With [`INBOUND_QUEUE_MESSAGES`] and
/// the SCTP window it bounds what a peer that ignores backpressure makes the receiver hold.
pub const STACK_QUEUE_MESSAGES: usize = 3 * 256;

pub struct DataLink {
    channel: Arc<dyn DataChannel>,
    // Behind a lock so receiving and sending can be awaited side by side through `&self`.
    inbound: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    paused: watch::Receiver<bool>,
    pump: tokio::task::JoinHandle<()>,
    /// What the peer's SDP allows per message; unlimited until the description is read.
    peer_max_message: usize,
}

impl DataLink {
    /// Starts pumping `channel`; resolves once it is open (or fails if it closes first).
    pub async fn open(
        channel: Arc<dyn DataChannel>,
        already_open: bool,
    ) -> Result<DataLink, LinkClosed> {
        channel
            .set_buffered_amount_low_threshold(BUFFERED_LOW_BYTES)
            .await
            .map_err(|_| LinkClosed)?;
        channel
            .set_buffered_amount_high_threshold(BUFFERED_HIGH_BYTES)
            .await
            .map_err(|_| LinkClosed)?;
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE_MESSAGES);
        let (paused_tx, paused) = watch::channel(false);
        let (open_tx, mut open_rx) = watch::channel(already_open);
        let pump_channel = channel.clone();
        let pump = tokio::spawn(async move {
            while let Some(event) = pump_channel.poll().await {
                match event {
                    DataChannelEvent::OnOpen => {
                        open_tx.send_replace(true);
                    }
                    DataChannelEvent::OnMessage(message) => {
                        let incoming = if message.is_string {
                            match String::from_utf8(message.data.to_vec()) {
                                Ok(text) => Incoming::Text(text),
                                // Not UTF-8: pass it on as binary so the protocol rejects it.
                                Err(e) => Incoming::Binary(e.into_bytes().into()),
                            }
                        } else {
                            Incoming::Binary(message.data.freeze())
                        };
                        if inbound_tx.send(incoming).await.is_err() {
                            break;
                        }
                    }
                    DataChannelEvent::OnBufferedAmountHigh => {
                        paused_tx.send_replace(true);
                    }
                    DataChannelEvent::OnBufferedAmountLow => {
                        paused_tx.send_replace(false);
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
            // Dropping the senders wakes anyone waiting to send or receive.
        });
        if !already_open && open_rx.wait_for(|open| *open).await.is_err() {
            return Err(LinkClosed);
        }
        Ok(DataLink {
            channel,
            inbound: tokio::sync::Mutex::new(inbound),
            paused,
            pump,
            peer_max_message: usize::MAX,
        })
    }

    pub fn set_peer_max_message(&mut self, bytes: usize) {
        self.peer_max_message = bytes;
    }

    pub async fn close(&self) {
        let _ = self.channel.close().await;
    }

    /// Bytes handed to the channel that the peer has not acknowledged yet.
    pub async fn outstanding_bytes(&self) -> usize {
        self.channel.outstanding_bytes().await.unwrap_or(0)
    }
}

impl Drop for DataLink {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

#[async_trait::async_trait]
impl Link for DataLink {
    async fn send_text(&self, text: String) -> Result<(), LinkClosed> {
        self.channel.send_text(&text).await.map_err(|_| LinkClosed)
    }

    fn max_message_bytes(&self) -> usize {
        self.peer_max_message
    }

    fn is_writable(&self) -> bool {
        !*self.paused.borrow()
    }

    async fn writable(&self) {
        let mut paused = self.paused.clone();
        // Err means the pump ended: the channel is closed, and the next send reports it.
        let _ = paused.wait_for(|p| !*p).await;
    }

    async fn send_binary(&self, data: BytesMut) -> Result<(), LinkClosed> {
        self.channel.send(data).await.map_err(|_| LinkClosed)
    }

    async fn recv(&self) -> Option<Incoming> {
        self.inbound.lock().await.recv().await
    }

    async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            match self.channel.outstanding_bytes().await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}
