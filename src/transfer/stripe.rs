//! One ordered, reliable [`Link`] striped over several lanes (each an ordered, reliable
//! link of its own, in practice a data channel on its own peer connection).
//!
//! Why: SCTP in webrtc 0.21 halves its window per loss and grows it by one packet per round
//! trip, so on a lossy path one association moves about `MTU / RTT × 1.22 / √p` whatever
//! the path's capacity. Several associations each get that much, so the sender spreads its
//! messages over as many lanes as the path needs and the receiver puts them back in order.
//!
//! Every message, text or binary, travels as a binary lane message with a trailer: the
//! message kind and a sequence number shared by all lanes of one direction. A trailer, not
//! a header, so the sender's chunk buffer grows in place instead of being copied. Each lane
//! is ordered, so the receiver needs to hold at most one message per lane to merge them.
//!
//! Credits: the receiving side grants the sender a window of messages
//! ([`CREDIT_WINDOW_MESSAGES`], or [`STRIPED_CREDIT_WINDOW_MESSAGES`] when striping) beyond
//! what it has consumed (a `credit` frame on lane 0 with the count consumed). Every lane's
//! inbound queue holds that many, so a lane's pump always has room, SCTP's receive window
//! never fills while the merge waits on a slower lane or the disk, and webrtc 0.21's missing
//! window-update SACK never turns a full window into a retransmission stall.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::{join_all, select_all};

use super::link::{Incoming, Link, LinkClosed};

/// Kind byte and sequence number at the end of every lane message.
pub const TRAILER_BYTES: usize = 9;
const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;
/// Out of sequence, on lane 0 only: the `seq` field is the count of messages consumed.
const KIND_CREDIT: u8 = 2;
/// Messages the sender may have sent beyond what the receiver consumed: at 64 KiB, 8 MiB,
/// several bandwidth-delay products of a 50 Mbit/s, 200 ms path and of loopback.
pub const CREDIT_WINDOW_MESSAGES: usize = 128;
/// The window when striping: a lane waiting out SCTP's retransmission timer (1 s, then
/// 2 s) holds up the merge, and the other lanes keep going only while credit lasts: 32 MiB
/// is about 5 s of 50 Mbit/s.
pub const STRIPED_CREDIT_WINDOW_MESSAGES: usize = 512;

/// Appends the trailer to a message's payload.
pub fn seal(mut payload: BytesMut, text: bool, seq: u64) -> BytesMut {
    payload.extend_from_slice(&[if text { KIND_TEXT } else { KIND_BINARY }]);
    payload.extend_from_slice(&seq.to_le_bytes());
    payload
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a lane message is shorter than its trailer")]
    Short,
    #[error("a lane message has an unknown kind")]
    Kind,
    #[error("a text message is not UTF-8")]
    NotText,
    #[error("a lane message arrived as text")]
    TextFrame,
}

/// A lane message, opened.
#[derive(Debug)]
pub enum Frame {
    Message(u64, Incoming),
    /// The peer has consumed this many of our messages.
    Credit(u64),
}

/// A credit frame: `consumed` messages taken from the merge so far.
pub fn credit(consumed: u64) -> BytesMut {
    let mut frame = BytesMut::with_capacity(TRAILER_BYTES);
    frame.extend_from_slice(&[KIND_CREDIT]);
    frame.extend_from_slice(&consumed.to_le_bytes());
    frame
}

/// Splits a lane message into its trailer's meaning and the message it carries.
pub fn open_frame(frame: Incoming) -> Result<Frame, FrameError> {
    if let Incoming::Binary(payload) = &frame
        && payload.len() == TRAILER_BYTES
        && payload[0] == KIND_CREDIT
    {
        let mut consumed = [0u8; 8];
        consumed.copy_from_slice(&payload[1..]);
        return Ok(Frame::Credit(u64::from_le_bytes(consumed)));
    }
    open(frame).map(|(seq, message)| Frame::Message(seq, message))
}

/// Splits a lane message into its sequence number and the message it carries.
pub fn open(frame: Incoming) -> Result<(u64, Incoming), FrameError> {
    let Incoming::Binary(mut payload) = frame else {
        return Err(FrameError::TextFrame);
    };
    if payload.len() < TRAILER_BYTES {
        return Err(FrameError::Short);
    }
    let trailer = payload.split_off(payload.len() - TRAILER_BYTES);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&trailer[1..]);
    let seq = u64::from_le_bytes(seq);
    let message = match trailer[0] {
        KIND_BINARY => Incoming::Binary(payload),
        KIND_TEXT => {
            Incoming::Text(String::from_utf8(payload.to_vec()).map_err(|_| FrameError::NotText)?)
        }
        _ => return Err(FrameError::Kind),
    };
    Ok((seq, message))
}

/// The receiving half's merge state: the next sequence number and the first unconsumed
/// message of each lane.
#[derive(Debug)]
pub struct Merge {
    next: u64,
    heads: Vec<Option<(u64, Incoming)>>,
    /// Once the peer broke the framing, why; every later read says so again.
    broken: Option<String>,
}

/// What the merge needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeStep {
    /// Read more from these lanes (the ones without a pending message).
    Read(Vec<usize>),
    /// Every lane holds a message and none is the next one, or a lane went back in
    /// sequence: the peer broke the protocol.
    Broken,
}

impl Merge {
    pub fn new(lanes: usize) -> Merge {
        Merge {
            next: 0,
            heads: (0..lanes).map(|_| None).collect(),
            broken: None,
        }
    }

    /// Takes the next message in sequence if a lane holds it.
    pub fn pop(&mut self) -> Option<Incoming> {
        let next = self.next;
        let slot = self
            .heads
            .iter_mut()
            .find(|head| matches!(head, Some((seq, _)) if *seq == next))?;
        let (_, message) = slot.take()?;
        self.next += 1;
        Some(message)
    }

    /// Records the message that lane `lane` delivered next.
    pub fn push(&mut self, lane: usize, seq: u64, message: Incoming) -> Result<(), MergeStep> {
        // A lane's messages only go up, and nothing comes twice.
        if seq < self.next || self.heads.get(lane).is_none_or(|h| h.is_some()) {
            return Err(MergeStep::Broken);
        }
        self.heads[lane] = Some((seq, message));
        Ok(())
    }

    /// Messages taken so far.
    pub fn consumed(&self) -> u64 {
        self.next
    }

    pub fn step(&self) -> MergeStep {
        let empty: Vec<usize> = (0..self.heads.len())
            .filter(|&i| self.heads[i].is_none())
            .collect();
        if empty.is_empty() {
            MergeStep::Broken
        } else {
            MergeStep::Read(empty)
        }
    }
}

/// A [`Link`] over several lanes. Receives from all of them; sends on the first `active`
/// (lane 0 alone until [`Striped::set_active`] says otherwise).
pub struct Striped<L: Link> {
    lanes: Vec<L>,
    active: AtomicUsize,
    /// Round-robin start for picking a lane to send on.
    turn: AtomicUsize,
    /// Held from numbering a message to queueing it, so each lane sees its messages in
    /// sequence order.
    sending: tokio::sync::Mutex<()>,
    merge: tokio::sync::Mutex<Merge>,
    /// Messages sent so far, which is also the next one's number; and the peer's latest
    /// count of those it consumed.
    sent: AtomicU64,
    credit: tokio::sync::watch::Sender<u64>,
    /// What our last credit frame said.
    granted: AtomicU64,
    /// The credit window both sides use, in messages.
    window: AtomicU64,
}

impl<L: Link> Striped<L> {
    /// `lanes` must not be empty; lane 0 is the one the peers authenticated first.
    pub fn new(lanes: Vec<L>) -> Striped<L> {
        assert!(!lanes.is_empty(), "a striped link needs a lane");
        let merge = Merge::new(lanes.len());
        Striped {
            lanes,
            active: AtomicUsize::new(1),
            turn: AtomicUsize::new(0),
            sending: tokio::sync::Mutex::new(()),
            merge: tokio::sync::Mutex::new(merge),
            sent: AtomicU64::new(0),
            credit: tokio::sync::watch::Sender::new(0),
            granted: AtomicU64::new(0),
            window: AtomicU64::new(CREDIT_WINDOW_MESSAGES as u64),
        }
    }

    /// Keeps the lanes whose `keep` is true (lane 0 always), before anything was striped.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut index = 0;
        self.lanes.retain(|_| {
            index += 1;
            index == 1 || keep.get(index - 1).copied().unwrap_or(false)
        });
        *self.merge.get_mut() = Merge::new(self.lanes.len());
        self.set_active(self.active());
    }

    pub fn lanes(&self) -> &[L] {
        &self.lanes
    }

    /// Sends on the first `n` lanes from now on (at least one, at most all).
    pub fn set_active(&self, n: usize) {
        self.active
            .store(n.clamp(1, self.lanes.len()), Ordering::Relaxed);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn active_lanes(&self) -> &[L] {
        &self.lanes[..self.active()]
    }

    /// The next active lane below its high-water mark, round-robin; lane `turn` if none is.
    fn pick(&self) -> &L {
        let lanes = self.active_lanes();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % lanes.len();
        (0..lanes.len())
            .map(|i| &lanes[(start + i) % lanes.len()])
            .find(|lane| lane.is_writable())
            .unwrap_or(&lanes[start])
    }

    /// Sets the credit window, the same on both sides, before anything was striped. Every
    /// lane's inbound queue must hold this many messages.
    pub fn set_window(&self, messages: usize) {
        self.window.store(messages as u64, Ordering::Relaxed);
    }

    fn window(&self) -> u64 {
        self.window.load(Ordering::Relaxed)
    }

    /// Whether the peer's credit allows another message now.
    fn has_credit(&self) -> bool {
        self.sent.load(Ordering::Relaxed) < *self.credit.borrow() + self.window()
    }

    /// Tells the peer how much we consumed, if that moved on by `at_least`.
    async fn grant(&self, consumed: u64, at_least: u64) {
        let granted = self.granted.load(Ordering::Relaxed);
        if consumed >= granted + at_least.max(1)
            && self.lanes[0].send_binary(credit(consumed)).await.is_ok()
        {
            self.granted.store(consumed, Ordering::Relaxed);
        }
    }

    async fn send_framed(&self, payload: BytesMut, text: bool) -> Result<(), LinkClosed> {
        let _numbering = self.sending.lock().await;
        let frame = seal(payload, text, self.sent.load(Ordering::Relaxed));
        self.pick().send_binary(frame).await?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait::async_trait]
impl<L: Link> Link for Striped<L> {
    async fn send_text(&self, text: String) -> Result<(), LinkClosed> {
        let mut payload = BytesMut::with_capacity(text.len() + TRAILER_BYTES);
        payload.extend_from_slice(text.as_bytes());
        self.send_framed(payload, true).await
    }

    fn is_writable(&self) -> bool {
        self.has_credit() && self.active_lanes().iter().any(|lane| lane.is_writable())
    }

    /// Credit arrives through `recv`, which the caller must keep polling meanwhile.
    async fn writable(&self) {
        let mut credit = self.credit.subscribe();
        let _ = credit
            .wait_for(|c| self.sent.load(Ordering::Relaxed) < c + self.window())
            .await;
        if self.active_lanes().iter().any(|lane| lane.is_writable()) {
            return;
        }
        let waits = self
            .active_lanes()
            .iter()
            .map(|lane| Box::pin(lane.writable()));
        select_all(waits).await;
    }

    async fn send_binary(&self, data: BytesMut) -> Result<(), LinkClosed> {
        self.send_framed(data, false).await
    }

    async fn recv(&self) -> Option<Incoming> {
        // Cancel-safe: a message read from a lane is stored before the next await.
        let mut merge = self.merge.lock().await;
        let broken = |merge: &mut Merge, lane: usize, why: &str| {
            tracing::warn!(lane, why, "the peer broke the lane framing");
            let why = format!("{why} (lane {lane})");
            merge.broken = Some(why.clone());
            Some(Incoming::Broken(why))
        };
        loop {
            if let Some(why) = &merge.broken {
                return Some(Incoming::Broken(why.clone()));
            }
            // Granted before a message is handed out, so cancelling this call loses nothing.
            self.grant(merge.consumed(), self.window() / 4).await;
            if let Some(message) = merge.pop() {
                return Some(message);
            }
            self.grant(merge.consumed(), 1).await;
            let MergeStep::Read(empty) = merge.step() else {
                return broken(&mut merge, 0, "lane messages out of sequence");
            };
            let reads = empty.iter().map(|&i| {
                let lane = &self.lanes[i];
                Box::pin(async move { (i, lane.recv().await) })
            });
            let ((lane, frame), _, _) = select_all(reads).await;
            // A lane that closed took messages with it: the whole link is gone.
            let frame = frame?;
            let (seq, message) = match open_frame(frame) {
                Ok(Frame::Message(seq, message)) => (seq, message),
                Ok(Frame::Credit(consumed)) if lane == 0 => {
                    // Never more than we sent: a peer cannot widen its own window.
                    let consumed = consumed.min(self.sent.load(Ordering::Relaxed));
                    self.credit.send_if_modified(|c| {
                        let moved = consumed > *c;
                        *c = (*c).max(consumed);
                        moved
                    });
                    continue;
                }
                _ => return broken(&mut merge, lane, "a malformed lane message"),
            };
            if merge.push(lane, seq, message).is_err() {
                return broken(&mut merge, lane, "lane messages out of sequence");
            }
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.lanes
            .iter()
            .map(|lane| lane.max_message_bytes())
            .min()
            .unwrap_or(usize::MAX)
            .saturating_sub(TRAILER_BYTES)
    }

    fn spare_capacity(&self) -> usize {
        TRAILER_BYTES
    }

    async fn flush(&self, limit: Duration) {
        join_all(self.lanes.iter().map(|lane| lane.flush(limit))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn binary(bytes: &[u8]) -> Incoming {
        Incoming::Binary(Bytes::copy_from_slice(bytes))
    }

    fn framed(payload: &[u8], text: bool, seq: u64) -> Incoming {
        Incoming::Binary(seal(BytesMut::from(payload), text, seq).freeze())
    }

    #[test]
    fn frames_round_trip_text_and_binary() {
        match open(framed(b"{\"type\":\"done\"}", true, 7)) {
            Ok((7, Incoming::Text(text))) => assert_eq!(text, "{\"type\":\"done\"}"),
            other => panic!("{other:?}"),
        }
        match open(framed(&[1, 2, 3], false, u64::MAX)) {
            Ok((u64::MAX, Incoming::Binary(bytes))) => assert_eq!(&bytes[..], &[1, 2, 3]),
            other => panic!("{other:?}"),
        }
        match open(framed(b"", false, 0)) {
            Ok((0, Incoming::Binary(bytes))) => assert!(bytes.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credit_frames_are_told_from_messages() {
        match open_frame(Incoming::Binary(credit(77).freeze())) {
            Ok(Frame::Credit(77)) => {}
            other => panic!("{other:?}"),
        }
        // A message whose payload is empty is still a message, however short.
        match open_frame(framed(b"", false, 3)) {
            Ok(Frame::Message(3, Incoming::Binary(bytes))) => assert!(bytes.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sealing_grows_in_place_when_there_is_room() {
        let mut payload = BytesMut::with_capacity(64 + TRAILER_BYTES);
        payload.resize(64, 9);
        let before = payload.as_ptr();
        let sealed = seal(payload, false, 1);
        assert_eq!(sealed.as_ptr(), before);
        assert_eq!(sealed.len(), 64 + TRAILER_BYTES);
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(open(binary(&[1; 8])).unwrap_err(), FrameError::Short);
        assert_eq!(
            open(Incoming::Text("x".into())).unwrap_err(),
            FrameError::TextFrame
        );
        let mut bad_kind = vec![0u8; 3];
        bad_kind.push(7);
        bad_kind.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(open(binary(&bad_kind)).unwrap_err(), FrameError::Kind);
        assert_eq!(
            open(framed(&[0xff, 0xfe], true, 0)).unwrap_err(),
            FrameError::NotText
        );
    }

    fn seq_of(message: Option<Incoming>) -> u8 {
        match message {
            Some(Incoming::Binary(bytes)) => bytes[0],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn merge_restores_order_across_lanes() {
        let mut merge = Merge::new(3);
        assert_eq!(merge.step(), MergeStep::Read(vec![0, 1, 2]));
        merge.push(1, 1, binary(&[1])).unwrap();
        merge.push(2, 2, binary(&[2])).unwrap();
        assert!(merge.pop().is_none(), "0 has not arrived");
        assert_eq!(merge.step(), MergeStep::Read(vec![0]));
        merge.push(0, 0, binary(&[0])).unwrap();
        assert_eq!(seq_of(merge.pop()), 0);
        assert_eq!(seq_of(merge.pop()), 1);
        assert_eq!(seq_of(merge.pop()), 2);
        assert!(merge.pop().is_none());
        merge.push(0, 3, binary(&[3])).unwrap();
        assert_eq!(seq_of(merge.pop()), 3);
    }

    /// One end of an in-memory ordered lane, to drive the striping and credit logic
    /// without WebRTC (the integration tests run it over real peer connections).
    struct MemoryLane {
        out: tokio::sync::mpsc::UnboundedSender<Incoming>,
        inbound: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Incoming>>,
        carried: AtomicUsize,
    }

    fn memory_lanes(n: usize) -> (Vec<MemoryLane>, Vec<MemoryLane>) {
        let end = |out, inbound| MemoryLane {
            out,
            inbound: tokio::sync::Mutex::new(inbound),
            carried: AtomicUsize::new(0),
        };
        (0..n)
            .map(|_| {
                let (a_tx, a_rx) = tokio::sync::mpsc::unbounded_channel();
                let (b_tx, b_rx) = tokio::sync::mpsc::unbounded_channel();
                (end(a_tx, b_rx), end(b_tx, a_rx))
            })
            .unzip()
    }

    #[async_trait::async_trait]
    impl Link for MemoryLane {
        async fn send_text(&self, text: String) -> Result<(), LinkClosed> {
            self.out.send(Incoming::Text(text)).map_err(|_| LinkClosed)
        }
        async fn writable(&self) {}
        async fn send_binary(&self, data: BytesMut) -> Result<(), LinkClosed> {
            self.carried.fetch_add(1, Ordering::Relaxed);
            self.out
                .send(Incoming::Binary(data.freeze()))
                .map_err(|_| LinkClosed)
        }
        async fn recv(&self) -> Option<Incoming> {
            self.inbound.lock().await.recv().await
        }
        async fn flush(&self, _limit: Duration) {}
    }

    #[tokio::test]
    async fn a_striping_sender_uses_every_lane_and_the_receiver_restores_order() {
        let (ours, theirs) = memory_lanes(3);
        let (sender, receiver) = (Striped::new(ours), Striped::new(theirs));
        sender.set_active(3);
        for i in 0..30u8 {
            if i % 10 == 0 {
                sender.send_text(format!("text {i}")).await.unwrap();
            }
            sender.send_binary(BytesMut::from(&[i][..])).await.unwrap();
        }
        for lane in sender.lanes() {
            assert!(
                lane.carried.load(Ordering::Relaxed) >= 10,
                "every lane carries"
            );
        }
        for i in 0..30u8 {
            if i % 10 == 0 {
                match receiver.recv().await {
                    Some(Incoming::Text(text)) => assert_eq!(text, format!("text {i}")),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(seq_of(receiver.recv().await), i);
        }
    }

    #[tokio::test]
    async fn the_sender_waits_for_credit_and_the_receiver_grants_it_as_it_consumes() {
        let (ours, theirs) = memory_lanes(2);
        let (sender, receiver) = (Striped::new(ours), Striped::new(theirs));
        sender.set_active(2);
        for link in [&sender, &receiver] {
            link.set_window(4);
        }
        for i in 0..4u8 {
            sender.writable().await;
            sender.send_binary(BytesMut::from(&[i][..])).await.unwrap();
        }
        assert!(!sender.is_writable(), "the window is used up");
        // Credit arrives through the sender's own reading, as in the transfer's loop;
        // `Ok(true)`: writable within `limit`.
        let writable_within = |limit| {
            tokio::time::timeout(limit, async {
                tokio::select! {
                    _ = sender.writable() => true,
                    _ = sender.recv() => false,
                }
            })
        };
        assert!(
            writable_within(Duration::from_millis(100)).await.is_err(),
            "no credit before the receiver consumed anything"
        );
        assert_eq!(seq_of(receiver.recv().await), 0);
        assert_eq!(seq_of(receiver.recv().await), 1);
        assert_eq!(
            writable_within(Duration::from_secs(5)).await,
            Ok(true),
            "writable once the receiver consumed"
        );
        assert!(sender.is_writable());
    }

    #[test]
    fn merge_refuses_a_peer_that_breaks_sequence() {
        let mut merge = Merge::new(2);
        merge.push(0, 0, binary(&[0])).unwrap();
        assert_eq!(seq_of(merge.pop()), 0);
        assert_eq!(
            merge.push(1, 0, binary(&[0])),
            Err(MergeStep::Broken),
            "a replay"
        );
        merge.push(0, 2, binary(&[2])).unwrap();
        assert_eq!(
            merge.push(0, 3, binary(&[3])),
            Err(MergeStep::Broken),
            "a second message on a lane whose head is not consumed"
        );
        merge.push(1, 3, binary(&[3])).unwrap();
        assert!(merge.pop().is_none());
        assert_eq!(merge.step(), MergeStep::Broken, "1 can never arrive");
        assert_eq!(
            merge.push(5, 9, binary(&[9])),
            Err(MergeStep::Broken),
            "no such lane"
        );
    }
}
