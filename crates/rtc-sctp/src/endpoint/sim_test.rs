//! A deterministic two-endpoint simulation on a virtual clock: a bottleneck link each way
//! with a rate, a FIFO queue, a one-way delay and a chosen loss pattern. It moves a bulk
//! transfer through real associations (the same code the endpoints run) and reports how
//! long it took and how recovery went, so loss-recovery and congestion rules are tested
//! against packets, not against internal state.

use super::*;
use crate::association::Event;
use crate::chunk::chunk_payload_data::PayloadProtocolIdentifier;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Which packets a link drops, asked for each DATA-carrying packet: its index among the
/// DATA packets offered (0-based), the TSN of its first DATA chunk, and how many times a
/// packet starting with that TSN was offered before (0: the first transmission).
pub(crate) type DropRule = Box<dyn FnMut(usize, u32, usize) -> bool>;

pub(crate) struct Link {
    delay: Duration,
    /// Bytes per second through the bottleneck; None: no bottleneck.
    rate: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops (tail drop).
    queue_limit: u64,
    busy_until: Option<Instant>,
    in_flight: VecDeque<(Instant, Bytes)>,
    data_offered: usize,
    offers_by_tsn: std::collections::HashMap<u32, usize>,
    drop: DropRule,
    pub(crate) dropped: usize,
    pub(crate) queue_drops: usize,
    /// The n-th DATA packet is held this much longer than the rest (reordering).
    hold: Option<(usize, Duration)>,
}

impl Link {
    /// Holds the n-th DATA packet back by `extra`, so later packets overtake it.
    pub(crate) fn reordering(mut self, n: usize, extra: Duration) -> Link {
        self.hold = Some((n, extra));
        self
    }

    pub(crate) fn new(delay: Duration, rate_mbit: Option<u64>, drop: DropRule) -> Link {
        let rate = rate_mbit.map(|m| m * 1_000_000 / 8);
        // One bandwidth-delay product of queue (at least 64 packets), like a sane router.
        let queue_limit = rate
            .map(|r| (r as f64 * delay.as_secs_f64() * 2.0) as u64)
            .unwrap_or(u64::MAX)
            .max(64 * 1200);
        Link {
            delay,
            rate,
            queue_limit,
            busy_until: None,
            in_flight: VecDeque::new(),
            data_offered: 0,
            offers_by_tsn: Default::default(),
            drop,
            dropped: 0,
            queue_drops: 0,
            hold: None,
        }
    }

    fn offer(&mut self, now: Instant, packet: Bytes) {
        let mut extra = Duration::ZERO;
        // Common header (12 bytes), then the first chunk's type; DATA is 0.
        if packet.len() > 20 && packet[12] == 0 {
            if let Some((n, hold)) = self.hold
                && n == self.data_offered
            {
                extra = hold;
            }
            let n = self.data_offered;
            self.data_offered += 1;
            let tsn = u32::from_be_bytes([packet[16], packet[17], packet[18], packet[19]]);
            let seen = self.offers_by_tsn.entry(tsn).or_default();
            let before = *seen;
            *seen += 1;
            if (self.drop)(n, tsn, before) {
                self.dropped += 1;
                return;
            }
        }
        let depart = match self.rate {
            None => now,
            Some(rate) => {
                let start = self.busy_until.map_or(now, |busy| busy.max(now));
                let queued = start.saturating_duration_since(now).as_secs_f64() * rate as f64;
                if queued as u64 + packet.len() as u64 > self.queue_limit {
                    self.queue_drops += 1;
                    return;
                }
                let done = start + Duration::from_secs_f64(packet.len() as f64 / rate as f64);
                self.busy_until = Some(done);
                done
            }
        };
        let arrival = depart + self.delay + extra;
        // Keep arrivals in time order: a held packet lets later ones overtake it.
        let at = self.in_flight.partition_point(|(t, _)| *t <= arrival);
        self.in_flight.insert(at, (arrival, packet));
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.front().map(|(at, _)| *at)
    }

    fn arrived(&mut self, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        while self.in_flight.front().is_some_and(|(at, _)| *at <= now) {
            out.extend(self.in_flight.pop_front().map(|(_, p)| p));
        }
        out
    }
}

struct Node {
    endpoint: Endpoint,
    addr: SocketAddr,
    handle: Option<AssociationHandle>,
    association: Option<Association>,
}

impl Node {
    fn new(addr: SocketAddr, server: Option<ServerConfig>) -> Node {
        Node {
            endpoint: Endpoint::new(
                addr,
                TransportProtocol::UDP,
                Arc::new(EndpointConfig::default()),
                server.map(Arc::new),
            ),
            addr,
            handle: None,
            association: None,
        }
    }

    fn receive(&mut self, now: Instant, from: SocketAddr, packet: Bytes) {
        if let Some((handle, event)) = self.endpoint.handle(now, from, None, packet) {
            match event {
                DatagramEvent::NewAssociation(association) => {
                    self.handle = Some(handle);
                    self.association = Some(association);
                }
                DatagramEvent::AssociationEvent(event) => {
                    if let Some(association) = &mut self.association {
                        association.handle_event(event);
                    }
                }
            }
        }
    }

    fn transmit(&mut self, now: Instant, link: &mut Link) {
        let (Some(association), Some(handle)) = (&mut self.association, self.handle) else {
            return;
        };
        if association.poll_timeout().is_some_and(|t| t <= now) {
            association.handle_timeout(now);
        }
        while let Some(event) = association.poll_endpoint_event() {
            self.endpoint.handle_event(handle, event);
        }
        while let Some(message) = association.poll_transmit(now) {
            if let Payload::RawEncode(packets) = message.message {
                for packet in packets {
                    link.offer(now, packet);
                }
            }
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.association.as_ref().and_then(|a| a.poll_timeout())
    }
}

/// What a simulated transfer did.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) elapsed: Duration,
    pub(crate) t3_timeouts: u64,
    pub(crate) fast_retransmissions: u64,
    pub(crate) dropped: usize,
    pub(crate) queue_drops: usize,
    /// The most bytes the receiver held that the application had not read.
    pub(crate) receiver_peak_unread: u32,
    /// The receiver's window at the end.
    pub(crate) receiver_window: u32,
    /// Whether BBR was setting the sender's window and pacing at the end.
    pub(crate) bbr_in_charge: bool,
}

/// Sends `total` bytes from client to server in `message`-byte messages over `forward`
/// (the return path has `reverse`), keeping at most `buffered` bytes queued in the sender,
/// and reading everything on the receiver as soon as it is readable (or, with
/// `read_every`, only at that interval). Panics if the transfer does not finish within
/// `limit` of simulated time or arrives damaged.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transfer(
    config: TransportConfig,
    forward: Link,
    reverse: Link,
    total: usize,
    message: usize,
    buffered: usize,
    read_every: Option<Duration>,
    limit: Duration,
) -> Outcome {
    let extras = Extras::default();
    transfer_with(
        config, forward, reverse, total, message, buffered, read_every, limit, extras,
    )
}

/// What a receiver does besides reading.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Extras {
    /// Send a 100-byte message this often (as a receiver reporting progress does), which
    /// gives the receiver round-trip samples of its own.
    pub(crate) talk_every: Option<Duration>,
    /// Read at most this many bytes each time it reads (a reader with a rate of its own).
    pub(crate) read_cap: Option<usize>,
}

/// [`transfer`] with [`Extras`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn transfer_with(
    config: TransportConfig,
    forward: Link,
    reverse: Link,
    total: usize,
    message: usize,
    buffered: usize,
    read_every: Option<Duration>,
    limit: Duration,
    extras: Extras,
) -> Outcome {
    let talk_every = extras.talk_every;
    let client_addr = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 5000);
    let server_addr = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 5000);
    let mut client = Node::new(client_addr, None);
    let mut server = Node::new(server_addr, Some(ServerConfig::new(config.clone())));
    let (mut forward, mut reverse) = (forward, reverse);
    let start = Instant::now();
    let mut now = start;
    let (handle, association) = client
        .endpoint
        .connect(now, ClientConfig::new(config), server_addr)
        .expect("connect");
    client.handle = Some(handle);
    client.association = Some(association);

    let ppi = PayloadProtocolIdentifier::Binary;
    let (mut written, mut read, mut opened, mut accepted) = (0usize, 0usize, false, false);
    let mut connected = false;
    let mut next_read = start;
    let mut next_talk = start;
    let mut peak_unread = 0u32;
    let mut finished = None;
    while now - start < limit {
        for packet in forward.arrived(now) {
            server.receive(now, client_addr, packet);
        }
        for packet in reverse.arrived(now) {
            client.receive(now, server_addr, packet);
        }
        if let Some(a) = &mut client.association {
            while let Some(event) = a.poll() {
                if matches!(event, Event::Connected) {
                    connected = true;
                }
            }
            if connected && !opened {
                a.open_stream(1, ppi).expect("open");
                opened = true;
            }
            // What the receiver says, read and dropped.
            while let Ok(Some(_)) = a.stream(1).map(|mut s| s.read_sctp()).unwrap_or(Ok(None)) {}
            while opened && written < total && a.buffered_amount() < buffered {
                let n = message.min(total - written);
                let body = Bytes::from(pattern(written, n));
                a.stream(1)
                    .expect("stream")
                    .write_sctp(now, &body, ppi)
                    .expect("write");
                written += n;
            }
        }
        if let Some(a) = &mut server.association {
            while a.poll().is_some() {}
            if !accepted && a.accept_stream().is_some() {
                accepted = true;
            }
            if let Some(every) = talk_every
                && accepted
                && now >= next_talk
            {
                let body = Bytes::from(vec![0u8; 100]);
                a.stream(1)
                    .expect("stream")
                    .write_sctp(now, &body, ppi)
                    .expect("talk");
                next_talk = now + every;
            }
            let unread = a.receive_window - a.get_my_receiver_window_credit();
            peak_unread = peak_unread.max(unread);
            if accepted && now >= next_read {
                let cap = read.saturating_add(extras.read_cap.unwrap_or(usize::MAX));
                while read < cap
                    && let Ok(Some(chunks)) =
                        a.stream(1).map(|mut s| s.read_sctp()).unwrap_or(Ok(None))
                {
                    let mut buf = vec![0u8; chunks.len()];
                    let n = chunks.read(&mut buf).expect("read");
                    assert_eq!(buf[..n], pattern(read, n)[..], "data damaged at {read}");
                    read += n;
                }
                if let Some(every) = read_every {
                    next_read = now + every;
                }
            }
        }
        if read == total {
            finished = Some(now - start);
            break;
        }
        client.transmit(now, &mut forward);
        server.transmit(now, &mut reverse);
        let next = [
            forward.next_arrival(),
            reverse.next_arrival(),
            client.next_timeout(),
            server.next_timeout(),
            read_every.filter(|_| read < total).map(|_| next_read),
            talk_every.filter(|_| accepted).map(|_| next_talk),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) if t > now => now = t,
            Some(_) => now += Duration::from_micros(10),
            None => panic!("stalled: {read} of {total} bytes after {:?}", now - start),
        }
    }
    let elapsed =
        finished.unwrap_or_else(|| panic!("unfinished: {read} of {total} bytes in {limit:?}"));
    let receiver_window = server.association.as_ref().map_or(0, |a| a.receive_window);
    let sender = client.association.as_ref().expect("client");
    let bbr_in_charge = sender.bbr_in_charge();
    let mut stats = sender.stats();
    Outcome {
        elapsed,
        t3_timeouts: stats.get_num_t3timeouts(),
        fast_retransmissions: stats.get_num_fast_retrans(),
        dropped: forward.dropped,
        queue_drops: forward.queue_drops,
        receiver_peak_unread: peak_unread,
        receiver_window,
        bbr_in_charge,
    }
}

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// No loss.
pub(crate) fn clean() -> DropRule {
    Box::new(|_, _, _| false)
}

/// Drops the first transmission of the DATA packets whose indexes are listed.
pub(crate) fn drop_data(indexes: &'static [usize]) -> DropRule {
    Box::new(move |n, _, before| before == 0 && indexes.contains(&n))
}

/// Drops the first transmission of the n-th DATA packet and, with `retransmissions`, that
/// many of its retransmissions too.
pub(crate) fn drop_with_retransmissions(n: usize, retransmissions: usize) -> DropRule {
    let mut target = None;
    Box::new(move |index, tsn, before| {
        if index == n && before == 0 {
            target = Some(tsn);
            return true;
        }
        target == Some(tsn) && before <= retransmissions
    })
}

/// Drops DATA packets at random with probability `percent`, from a fixed seed.
pub(crate) fn random_loss(percent: f64, seed: u64) -> DropRule {
    let mut state = seed.max(1);
    Box::new(move |_, _, _| {
        // xorshift64: reproducible without a dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1_000_000) as f64 / 10_000.0 < percent
    })
}
