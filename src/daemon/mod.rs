//! The daemon: control socket, embedded rendezvous, job table, and orderly shutdown.
//! Only the daemon spawns tasks, and every task stops when `shutdown` fires.

pub(crate) mod connection;
mod desktop;
mod device_jobs;
mod devices;
pub mod history;
pub mod jobs;
pub mod mailbox;
pub mod manual;
pub mod migrate;
pub(crate) mod nearby;
mod outbox;
pub mod pairing;
pub mod rate;
pub mod record;
mod runner;
pub mod socket;
mod spool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{DaemonConfig, RendezvousMode};
use crate::rendezvous::Endpoint;
use crate::rendezvous::instances::Instances;
use crate::rendezvous::server::{self, RendezvousConfig};
use jobs::{Context, Jobs};

/// Concurrent control connections; more are refused so a local flood cannot exhaust memory.
const MAX_CONTROL_CONNECTIONS: usize = 256;
/// How long shutdown waits for jobs to tell their peers and remove partial files.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error(transparent)]
    Identity(#[from] crate::devices::identity::IdentityError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("cannot read the paired devices: {0}")]
    Devices(#[source] std::io::Error),
    #[error(transparent)]
    RendezvousTls(#[from] crate::rendezvous::tls::TlsError),
    #[error(
        "cannot start the rendezvous on {addr} (another program may hold that port: choose another with --rendezvous-listen)"
    )]
    Rendezvous {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A daemon whose sockets are bound and which is serving.
pub struct Daemon {
    socket: PathBuf,
    /// Who removes the socket when the daemon stops.
    listening: socket::Listening,
    rendezvous_url: String,
    rendezvous_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// The LAN: a listener for nearby offers on every interface, and the announcement of its
/// port. A machine where either cannot start still transfers; its log says why.
async fn start_lan(name: &str) -> Option<(tokio::net::TcpListener, Arc<crate::lan::Discovery>)> {
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", 0)).await {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "cannot listen for nearby offers: LAN discovery is off");
            return None;
        }
    };
    let port = listener.local_addr().ok()?.port();
    match crate::lan::Discovery::start(name, port) {
        Ok(discovery) => Some((listener, Arc::new(discovery))),
        Err(error) => {
            warn!(%error, "LAN discovery is off");
            None
        }
    }
}

impl Daemon {
    /// Binds the rendezvous (if embedded) and the control socket, and starts serving.
    pub async fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Before any peer connection: the rtc crate builds SCTP from the process default.
        config
            .rtc
            .sctp_recovery
            .install(config.rtc.sctp_window_max_bytes);
        // Bind the control socket first: a second daemon must fail before touching anything.
        let (listener, listening) = socket::listen(&config.socket).await?;
        if matches!(listening, socket::Listening::Activated) {
            info!("listening on the control socket systemd passed");
        }
        // An older version's state, in a directory it alone used, comes first: otherwise
        // the identity below would be a new one.
        if let migrate::Adopted::From(earlier) =
            migrate::adopt(&config.state_dir, &config.earlier_state_dirs)?
        {
            info!(from = %earlier.display(), to = %config.state_dir.display(), "moved the state of an earlier version into the state directory");
        }
        // The identity is made on first start; a broken one stops the start cleanly.
        let loaded = crate::devices::identity::Identity::load_or_create(&config.state_dir)
            .map_err(DaemonError::from)
            .and_then(|identity| {
                crate::devices::registry::Registry::load(&config.state_dir)
                    .map(|devices| (identity, devices))
                    .map_err(DaemonError::Devices)
            });
        let (identity, devices) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                listening.release();
                return Err(error);
            }
        };
        let (rendezvous_url, rendezvous_addr) = match &config.rendezvous {
            RendezvousMode::Remote { urls, ca } => {
                let endpoint = match Instances::new(urls, ca.as_deref()) {
                    Ok(endpoint) => endpoint,
                    Err(error) => {
                        listening.release();
                        return Err(error.into());
                    }
                };
                (endpoint, None)
            }
            RendezvousMode::Embedded { listen } => {
                let bound = server::bind(*listen).await;
                let tcp = match bound {
                    Ok(tcp) => tcp,
                    Err(source) => {
                        listening.release();
                        return Err(DaemonError::Rendezvous {
                            addr: *listen,
                            source,
                        });
                    }
                };
                let addr = tcp.local_addr().map_err(|source| DaemonError::Rendezvous {
                    addr: *listen,
                    source,
                })?;
                let rendezvous_config = RendezvousConfig {
                    slot_ttl: config.code_ttl,
                    ..RendezvousConfig::default()
                };
                tracker.spawn(server::serve(tcp, rendezvous_config, shutdown.clone()));
                let url = format!("ws://{}", local_view(addr));
                (Instances::one(Endpoint::from(url.as_str())), Some(addr))
            }
        };
        let socket_path = config.socket.clone();
        let identity = Arc::new(identity);
        let lan = match config.lan_discovery {
            true => start_lan(&config.device_name).await,
            false => None,
        };
        let jobs = Arc::new(Jobs::new(
            Context {
                identity,
                devices: Arc::new(std::sync::Mutex::new(devices)),
                records: record::RecordStore::new(config.state_dir.clone()),
                config,
                rendezvous_url: rendezvous_url.clone(),
                shutdown: shutdown.clone(),
                space: Default::default(),
                mailboxes: Default::default(),
                lan: lan.as_ref().map(|(_, discovery)| discovery.clone()),
            },
            shutdown.clone(),
            tracker.clone(),
        ));
        jobs.restore().await;
        spool::sweep(&jobs, &jobs.context.config.state_dir);
        mailbox::sync(&jobs);
        if let Some((listener, discovery)) = lan {
            tracker.spawn(discovery.run(shutdown.clone()));
            tracker.spawn(nearby::accept_loop(listener, jobs.clone()));
        }
        tracker.spawn(accept_loop(
            listener,
            jobs,
            shutdown.clone(),
            tracker.clone(),
        ));
        info!(socket = %socket_path.display(), rendezvous = %rendezvous_url.url(), "p2pd ready");
        Ok(Daemon {
            socket: socket_path,
            listening,
            rendezvous_url: rendezvous_url.url().to_owned(),
            rendezvous_addr,
            shutdown,
            tracker,
        })
    }

    pub fn rendezvous_url(&self) -> &str {
        &self.rendezvous_url
    }

    pub fn rendezvous_addr(&self) -> Option<SocketAddr> {
        self.rendezvous_addr
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until shutdown is requested, then cancels every job (telling peers and
    /// removing partials), waits for them within a grace period and removes the socket.
    pub async fn run_until_stopped(self) {
        self.shutdown.cancelled().await;
        self.stop().await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some jobs did not stop in time");
        }
        self.listening.release();
        info!("p2pd stopped");
    }
}

/// The address a local client should dial for a listener bound to `addr`.
fn local_view(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

async fn accept_loop(
    listener: UnixListener,
    jobs: Arc<Jobs>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !socket::peer_allowed(&stream) {
            warn!("refused a control connection from another user");
            // Say why, best effort and bounded: this peer gets nothing else.
            let mut stream = stream;
            let refusal = crate::ipc::messages::ServerFrame::Error {
                kind: crate::ipc::messages::ErrorKind::PermissionDenied,
                message: "this p2pd belongs to another user: start your own p2pd".into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                crate::ipc::codec::write_frame(&mut stream, &refusal),
            )
            .await;
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!("too many control connections, refusing one");
            continue;
        };
        let (jobs, shutdown) = (jobs.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            if let Err(error) = connection::serve(stream, jobs, shutdown).await {
                tracing::debug!(%error, "client connection ended");
            }
        });
    }
}
