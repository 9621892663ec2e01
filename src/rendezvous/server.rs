//! The rendezvous server: pairs two daemons by nameplate and forwards opaque blobs.
//!
//! It never sees a code's words, file names, addresses or SDP: after pairing it only moves
//! sealed bytes. Every connection, slot and message is bounded, and so is every wait: a
//! connection must ask for something within `fresh_deadline`, and a claimer must complete
//! the key exchange within `pake_deadline`. This file accepts connections and admits
//! them; `conn.rs` runs each one, `slots.rs` is the slot table, `store/` keeps it (in
//! memory, or in Redis shared by several instances) and carries events between
//! connections (`bus.rs`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::admission::{Admission, Admit};
use super::bus::lock;
use super::conn::{Connection, Shared, error, send};
use super::ice::IceHandout;
use super::limits::{AddressTable, MissBudget, PerAddressLimits};
use super::messages::ServerErrorKind;
use super::pair::{PAIR_LIFETIME, RelayBudget};
use super::slots::Lifetimes;
use super::store::{self, Store, StoreKind, StoreLimits};
use super::tls::ServerTls;

/// Largest WebSocket message accepted; SDPs and candidates are far smaller.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Time a client gets to finish the TLS and WebSocket handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a paired connection may go without a message (pings do not count) before it is
/// dropped.
pub(crate) const PAIRED_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes read from a socket at a time. tungstenite's default (128 KiB) is reserved per
/// connection, which made an idle connection cost ~140 KiB; a larger message still
/// arrives, in more reads.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Connections turned away at once with a `busy` answer; past that they are just closed,
/// so answering cannot itself become the way to exhaust the server.
const BUSY_ANSWERS: usize = 64;
/// Time a turned-away connection gets to complete its handshakes and read `busy`.
const BUSY_ANSWER_TIME: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// How long an allocated nameplate waits for its peer.
    pub slot_ttl: Duration,
    pub max_slots: usize,
    /// Connections held at once; when full, an idle one gives way (see `admission`).
    pub max_connections: usize,
    pub per_address: PerAddressLimits,
    /// Time a new connection has to allocate, claim or rejoin, whatever else it sends.
    pub fresh_deadline: Duration,
    /// Time from a claim until both sides must have relayed their SPAKE2 message and
    /// confirmation tag; a claimer that has not is dropped and the nameplate burned.
    pub pake_deadline: Duration,
    /// STUN handed to every paired client; TURN once its pair did the key exchange.
    pub ice: IceHandout,
    /// How long a pair may stay paired, and what each side may relay in that time.
    pub pair_lifetime: Duration,
    pub relay_budget: RelayBudget,
    /// Claims of missing nameplates a minute, server-wide, while few codes are open
    /// (`pair::misses_per_minute` grows it with load).
    pub misses_per_minute: u32,
    /// Serve `wss://` with these certificate files; `None` serves `ws://`.
    pub tls: Option<Arc<ServerTls>>,
    /// Where slots live: this process, or Redis shared with other instances.
    pub store: StoreKind,
    /// PEM certificates a `rediss://` store is checked against instead of the system's
    /// roots (a private CA).
    pub store_ca: Option<Vec<u8>>,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            slot_ttl: Duration::from_secs(600),
            max_slots: 10_000,
            max_connections: 1_000,
            per_address: PerAddressLimits::default(),
            fresh_deadline: Duration::from_secs(10),
            pake_deadline: Duration::from_secs(5),
            ice: IceHandout::default(),
            pair_lifetime: PAIR_LIFETIME,
            relay_budget: RelayBudget::default(),
            misses_per_minute: 6,
            tls: None,
            store: StoreKind::Memory,
            store_ca: None,
        }
    }
}

/// Serves until `shutdown` fires, then waits for every connection task to end. Slots are
/// kept in the store `config.store` names.
pub async fn serve(listener: TcpListener, config: RendezvousConfig, shutdown: CancellationToken) {
    let store = store::open(
        &config.store,
        config.store_ca.as_deref(),
        store_limits(&config),
        &shutdown,
    );
    serve_with(listener, config, store, shutdown).await;
}

/// What a store for `config` is sized by.
pub fn store_limits(config: &RendezvousConfig) -> StoreLimits {
    StoreLimits {
        max_slots: config.max_slots,
        lifetimes: Lifetimes {
            slot: config.slot_ttl,
            pair: config.pair_lifetime,
        },
    }
}

/// [`serve`] with slots in `store`.
pub async fn serve_with(
    listener: TcpListener,
    config: RendezvousConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    let busy_answers = Arc::new(Semaphore::new(BUSY_ANSWERS));
    let shared = Arc::new(Shared {
        admission: Mutex::new(Admission::new(config.max_connections)),
        addresses: Mutex::new(AddressTable::new(config.per_address)),
        misses: Mutex::new(MissBudget::new(config.misses_per_minute, Instant::now())),
        config,
        store,
        shutdown: shutdown.clone(),
    });
    let config = &shared.config;
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        let store = match &config.store {
            StoreKind::Memory => "memory",
            StoreKind::Redis(_) => "redis",
        };
        info!(%addr, tls = config.tls.is_some(), store, "rendezvous listening");
    }
    let health = shared.store.health();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%error, "rendezvous accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Signaling is small messages answered at once: Nagle's algorithm held each behind
        // the peer's delayed ACK, about 40 ms a turn (88 ms a pairing on loopback,
        // `cargo bench --bench rendezvous`).
        let _ = stream.set_nodelay(true);
        let turn_away = |stream, why: &'static str| {
            debug!(%peer, why, "turning a connection away");
            // Told "busy" when there is room to say it, so its user hears "try again"
            // rather than "cannot reach the rendezvous".
            if let Ok(permit) = busy_answers.clone().try_acquire_owned() {
                let tls = config.tls.clone();
                let health = health.clone();
                tracker.spawn(async move {
                    let answer = async {
                        if let Some(mut ws) = websocket(stream, tls.as_deref(), &health).await {
                            let _ = send(&mut ws, &error(ServerErrorKind::Busy, why)).await;
                            close_gracefully(ws).await;
                        }
                    };
                    let _ = tokio::time::timeout(BUSY_ANSWER_TIME, answer).await;
                    drop(permit);
                });
            }
        };
        if !lock(&shared.addresses).connect(peer.ip(), Instant::now()) {
            turn_away(stream, "too many connections from your address");
            continue;
        }
        let evict = CancellationToken::new();
        let id = match lock(&shared.admission).admit(evict.clone()) {
            Admit::In { id, evicted } => {
                if let Some(evicted) = evicted {
                    evicted.cancel();
                }
                id
            }
            Admit::Full => {
                lock(&shared.addresses).disconnect(peer.ip());
                turn_away(stream, "the rendezvous is full");
                continue;
            }
        };
        let health = health.clone();
        let conn = Connection {
            shared: shared.clone(),
            id,
            evict,
            ip: peer.ip(),
        };
        tracker.spawn(
            async move {
                // Evicted mid-handshake, it goes at once rather than at the handshake timeout.
                let ws = tokio::select! {
                    ws = websocket(stream, conn.shared.config.tls.as_deref(), &health) => ws,
                    _ = conn.evict.cancelled() => None,
                };
                if let Some(ws) = ws {
                    conn.run(ws).await;
                }
                lock(&conn.shared.admission).leave(conn.id);
                lock(&conn.shared.addresses).disconnect(conn.ip);
            }
            .instrument(tracing::info_span!("rendezvous_conn", %peer)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// Either transport under the WebSocket; the rest of the server does not care which.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

pub(super) type Ws = WebSocketStream<Box<dyn Transport>>;

/// TLS (when configured) and the WebSocket handshake, within [`HANDSHAKE_TIMEOUT`]; a
/// request for the browser page or a health check (answered from `health`, the store's)
/// is answered here instead, and gets `None`.
async fn websocket(
    stream: TcpStream,
    tls: Option<&ServerTls>,
    health: &watch::Receiver<Option<String>>,
) -> Option<Ws> {
    let handshakes = async {
        let transport: Box<dyn Transport> = match tls {
            Some(tls) => match tls.acceptor().accept(stream).await {
                Ok(stream) => Box::new(stream),
                Err(error) => {
                    debug!(%error, "TLS handshake failed");
                    return None;
                }
            },
            None => Box::new(stream),
        };
        // The same address serves the browser page: only an upgrade goes on.
        let mut transport = transport;
        let (read, end) = super::page::read_head(&mut transport).await?;
        match super::page::parse_head(&read[..end]) {
            super::page::Head::WebSocket => {}
            check if super::page::is_health_check(&check) => {
                let head_only = matches!(
                    check,
                    super::page::Head::Get {
                        head_only: true,
                        ..
                    }
                );
                let problem = health.borrow().clone();
                let answer = super::page::health(problem.as_deref(), head_only);
                let _ = tokio::io::AsyncWriteExt::write_all(&mut transport, &answer).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut transport).await;
                return None;
            }
            other => {
                let scheme = match tls {
                    Some(_) => super::page::Scheme::Https,
                    None => super::page::Scheme::Http,
                };
                super::page::serve(&mut transport, &other, scheme).await;
                return None;
            }
        }
        let transport: Box<dyn Transport> = Box::new(super::page::Rewound::new(read, transport));
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES))
            .read_buffer_size(READ_BUFFER_BYTES);
        match tokio_tungstenite::accept_async_with_config(transport, Some(ws_config)).await {
            Ok(ws) => Some(ws),
            Err(error) => {
                debug!(%error, "websocket handshake failed");
                None
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshakes).await {
        Ok(ws) => ws,
        Err(_) => {
            debug!("handshake timed out");
            None
        }
    }
}

/// Closes after a final answer without losing it: the client may still be sending its
/// request, and closing a socket with unread data makes the kernel reset it, which can
/// destroy the answer before the client reads it.
async fn close_gracefully(mut ws: Ws) {
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// Binds `addr` and serves on it; used by `p2pd rendezvous` and the embedded server.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Daemons come back together after an outage: a short accept queue overflowed at 200
    // connecting at once, and each dropped SYN cost its client a second (the kernel caps
    // this at net.core.somaxconn).
    socket.listen(LISTEN_BACKLOG)
}

/// Connections the kernel queues for `accept`.
const LISTEN_BACKLOG: u32 = 4096;

/// The listening socket systemd passed (`p2pd-rendezvous.socket`: port 443 without
/// CAP_NET_BIND_SERVICE), else `addr` bound by [`bind`]; says which.
pub async fn listen(addr: SocketAddr) -> std::io::Result<(TcpListener, bool)> {
    if let Some(passed) = listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        passed.set_nonblocking(true)?;
        return Ok((TcpListener::from_std(passed)?, true));
    }
    Ok((bind(addr).await?, false))
}
