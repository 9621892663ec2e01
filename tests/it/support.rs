//! Starts real daemons in-process on temporary sockets, with the embedded rendezvous and
//! WebRTC bound to loopback, and drives them through the real IPC client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use p2pd::config::{DaemonConfig, RendezvousMode};
use p2pd::daemon::Daemon;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{ErrorKind, JobId, JobInfo, JobSummary, Request, ServerFrame};
use p2pd::rtc::RtcSettings;
use tempfile::TempDir;

/// Every test gets this long before it is declared hung.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    config: DaemonConfig,
    pub socket: PathBuf,
    pub downloads: PathBuf,
    _dir: TempDir,
}

pub struct Options {
    pub rendezvous: Option<String>,
    /// A private CA for a `wss://` rendezvous.
    pub rendezvous_ca: Option<PathBuf>,
    pub code_ttl: Duration,
    pub resume_window: Duration,
    pub limits: p2pd::transfer::names::Limits,
    /// The name paired devices see.
    pub device_name: &'static str,
    /// How long a send to a paired device waits for it to come online.
    pub device_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rendezvous: None,
            rendezvous_ca: None,
            code_ttl: Duration::from_secs(600),
            resume_window: Duration::from_secs(3600),
            limits: Default::default(),
            device_name: "test",
            device_wait: Duration::from_secs(3600),
        }
    }
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        TestDaemon::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestDaemon {
        // Logs only when asked for (RUST_LOG), through the test harness's capture.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run").join("p2pd.sock");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(&downloads).expect("downloads dir");
        let config = DaemonConfig {
            socket: socket.clone(),
            download_dir: downloads.clone(),
            rendezvous: match options.rendezvous {
                // Several instances of one rendezvous: "URL,URL".
                Some(urls) => RendezvousMode::Remote {
                    urls: urls.split(',').map(str::to_owned).collect(),
                    ca: options.rendezvous_ca,
                },
                None => RendezvousMode::Embedded {
                    listen: "127.0.0.1:0".parse().unwrap(),
                },
            },
            code_ttl: options.code_ttl,
            state_dir: dir.path().join("state"),
            earlier_state_dirs: Vec::new(),
            resume_window: options.resume_window,
            device_wait: options.device_wait,
            rtc: RtcSettings {
                ice_servers: Vec::new(),
                bind: vec!["127.0.0.1:0".into()],
                relay_only: false,
                udp_buffer_bytes: p2pd::rtc::runtime::UDP_SOCKET_BUFFER_BYTES,
                sctp_window_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES,
                sctp_window_max_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES,
                sctp_recovery: Default::default(),
                remote_candidates: Default::default(),
            },
            limits: options.limits,
            path_policy: Default::default(),
            device_name: options.device_name.into(),
            // In-process daemons stay off the machine's real LAN; the netns tests announce.
            lan_discovery: false,
        };
        let daemon = Daemon::start(config.clone()).await.expect("daemon starts");
        TestDaemon {
            daemon: Some(daemon),
            config,
            socket,
            downloads,
            _dir: dir,
        }
    }

    /// The rendezvous this daemon uses (its embedded one, unless told another).
    pub fn rendezvous_url(&self) -> String {
        self.daemon
            .as_ref()
            .expect("running")
            .rendezvous_url()
            .to_owned()
    }

    /// A second daemon that uses this one's rendezvous, as another machine would.
    pub async fn peer(&self) -> TestDaemon {
        self.peer_with(Options {
            device_name: "peer",
            ..Options::default()
        })
        .await
    }

    /// [`TestDaemon::peer`] with other options (its rendezvous is always this one's).
    pub async fn peer_with(&self, options: Options) -> TestDaemon {
        let url = self
            .daemon
            .as_ref()
            .expect("running")
            .rendezvous_url()
            .to_owned();
        TestDaemon::start_with(Options {
            rendezvous: Some(url),
            ..options
        })
        .await
    }

    /// Where the daemon keeps its identity, paired devices and job records.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Starts a send to the paired device `to`, without a code.
    pub async fn send_to(&self, to: &str, paths: &[PathBuf]) -> Result<JobId, (ErrorKind, String)> {
        let reply = self
            .client()
            .await
            .call(Request::Send {
                paths: paths.to_vec(),
                follow: false,
                path: Default::default(),
                words: None,
                text: None,
                manual: false,
                to: Some(p2pd::ipc::messages::Recipient::Paired(to.to_owned())),
            })
            .await
            .expect("send reply");
        match reply {
            ServerFrame::Created(info) => Ok(info.id),
            ServerFrame::Error { kind, message } => Err((kind, message)),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub async fn client(&self) -> IpcClient {
        IpcClient::connect(&self.socket)
            .await
            .expect("connect to daemon")
    }

    pub async fn send(&self, paths: &[PathBuf]) -> Result<(JobId, String), (ErrorKind, String)> {
        let mut client = self.client().await;
        match client
            .call(Request::Send {
                paths: paths.to_vec(),
                follow: false,
                path: Default::default(),
                words: None,
                text: None,
                manual: false,
                to: None,
            })
            .await
            .expect("send reply")
        {
            ServerFrame::Created(info) => Ok((info.id, info.code.expect("send jobs have a code"))),
            ServerFrame::Error { kind, message } => Err((kind, message)),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub async fn receive(&self, code: &str) -> Result<JobId, (ErrorKind, String)> {
        self.receive_into(code, None).await
    }

    pub async fn receive_into(
        &self,
        code: &str,
        dir: Option<&Path>,
    ) -> Result<JobId, (ErrorKind, String)> {
        let mut client = self.client().await;
        let request = Request::Receive {
            code: code.to_owned(),
            download_dir: dir.map(Path::to_owned),
            accept: true,
            follow: false,
            path: Default::default(),
        };
        match client.call(request).await.expect("receive reply") {
            ServerFrame::Created(info) => Ok(info.id),
            ServerFrame::Error { kind, message } => Err((kind, message)),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Starts a receive that waits for [`TestDaemon::decide`] before accepting.
    pub async fn receive_asking(&self, code: &str, dir: &Path) -> JobId {
        let request = Request::Receive {
            code: code.to_owned(),
            download_dir: Some(dir.to_owned()),
            accept: false,
            follow: false,
            path: Default::default(),
        };
        match self
            .client()
            .await
            .call(request)
            .await
            .expect("receive reply")
        {
            ServerFrame::Created(info) => info.id,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub async fn decide(&self, id: JobId, accept: bool) {
        let reply = self
            .client()
            .await
            .call(Request::Decide { job: id, accept })
            .await
            .expect("decide");
        assert_eq!(reply, ServerFrame::Done);
    }

    /// Follows job `id` until it is final.
    pub async fn wait(&self, id: JobId) -> JobInfo {
        let mut client = self.client().await;
        client
            .send(Request::Watch { job: id })
            .await
            .expect("watch");
        let mut view = JobInfo::default();
        let mut updated = false;
        while let Some(frame) = client.next().await.expect("watch frame") {
            match frame {
                ServerFrame::Done => break,
                ServerFrame::Error { .. } | ServerFrame::Jobs(_) | ServerFrame::Hello { .. } => {
                    panic!("unexpected frame {frame:?}")
                }
                other => updated |= view.apply(&other),
            }
        }
        assert!(updated, "at least one update");
        view
    }

    /// Waits until job `id` satisfies `pred`, returning that snapshot.
    pub async fn wait_until(&self, id: JobId, pred: impl Fn(&JobInfo) -> bool) -> JobInfo {
        let mut client = self.client().await;
        client
            .send(Request::Watch { job: id })
            .await
            .expect("watch");
        let mut view = JobInfo::default();
        while let Some(frame) = client.next().await.expect("watch frame") {
            if view.apply(&frame) && (pred(&view) || view.state.is_final()) {
                return view;
            }
        }
        panic!("job {id} ended without matching");
    }

    pub async fn cancel(&self, id: JobId) {
        let reply = self
            .client()
            .await
            .call(Request::Cancel { job: id })
            .await
            .expect("cancel");
        assert_eq!(reply, ServerFrame::Done);
    }

    pub async fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
    }

    /// Stops the daemon if it runs and starts it again on the same socket, directories and
    /// rendezvous, as a service restart would.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.daemon = Some(
            Daemon::start(self.config.clone())
                .await
                .expect("daemon restarts"),
        );
    }

    /// Every job the daemon knows.
    pub async fn jobs(&self) -> Vec<JobSummary> {
        match self.client().await.call(Request::List).await {
            Ok(ServerFrame::Jobs(jobs)) => jobs,
            other => panic!("list failed: {other:?}"),
        }
    }
}

/// Seeded random files: one generator for every test and benchmark.
pub use crate::netns_harness::random_file;

/// Files in `dir` (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn assert_no_partials(dir: &Path) {
    let partials: Vec<String> = listing(dir)
        .into_iter()
        .filter(|n| n.ends_with(".p2pd-part"))
        .collect();
    assert!(
        partials.is_empty(),
        "partial files left behind: {partials:?}"
    );
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("read file"),
    ))
}
