//! Configuration: the TOML file's raw form, and the validated settings the daemon runs on.
//! Precedence: command-line flag, environment, config file, default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ipc::messages::PathPolicy;
use crate::rtc::{IceServer, RtcSettings};
use crate::transfer::names::Limits;

mod paths;
use paths::project_dirs;
mod describe;
pub mod rendezvous;

pub use describe::describe;
pub use paths::{
    default_download_dir, default_socket_path, default_state_dir, earlier_state_dirs, host_name,
};
pub use rendezvous::{Capacity, CapacityFlags, RendezvousFileConfig};

/// Default lifetime of an unclaimed code.
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(600);
/// How long an interrupted job keeps trying to resume.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long a send to a paired device waits for it to come online, unless configured.
pub const DEFAULT_DEVICE_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The config file as written. Every daemon flag has a key here; unknown keys are errors.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub download_dir: Option<PathBuf>,
    /// URL of a rendezvous to use instead of the embedded one, like `ws://host:9009` or
    /// `wss://host:9009`; or a list of instances of one rendezvous, tried in turn.
    pub rendezvous: Option<OneOrMore>,
    /// PEM file of the private CA a `wss://` rendezvous's certificate is checked against
    /// (instead of the system's roots).
    pub rendezvous_ca: Option<PathBuf>,
    /// Address the embedded rendezvous listens on.
    pub rendezvous_listen: Option<SocketAddr>,
    pub code_ttl_secs: Option<u64>,
    /// Where unfinished jobs are kept so they survive restarts.
    pub state_dir: Option<PathBuf>,
    /// How long an interrupted job keeps trying to resume before it fails.
    pub resume_window_secs: Option<u64>,
    /// How long `p2p send --to NAME` waits for an offline device to come online.
    pub device_wait_secs: Option<u64>,
    /// Local UDP addresses WebRTC binds, like `["0.0.0.0:0"]`.
    pub ice_bind: Option<Vec<String>>,
    /// Send and receive buffer of each WebRTC UDP socket (default 4 MiB; 0 = kernel default).
    pub udp_buffer_bytes: Option<usize>,
    /// SCTP receive window the peer connection starts with (default 2 MiB).
    pub sctp_window_bytes: Option<u32>,
    /// How far that window may grow while the reader keeps up (default 16 MiB).
    pub sctp_window_max_bytes: Option<u32>,
    /// SCTP loss recovery and congestion control (docs/TRANSPORT.md).
    pub sctp_recovery: Option<crate::rtc::sctp::SctpRecovery>,
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// Default for every transfer: only through a TURN relay.
    pub force_relay: Option<bool>,
    /// Default for every transfer: fail rather than relay.
    pub require_direct: Option<bool>,
    /// Offers with more files than this are refused before anyone is asked.
    pub max_files: Option<usize>,
    /// Offers larger than this in total are refused before anyone is asked.
    pub max_total_bytes: Option<u64>,
    /// Offers with a file larger than this are refused before anyone is asked.
    pub max_file_bytes: Option<u64>,
    /// The name paired devices see (default: the host name).
    pub device_name: Option<String>,
    /// Announce this daemon on the LAN (mDNS) and take nearby offers (default true).
    pub lan_discovery: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no download directory is known for this user: pass --download-dir DIR")]
    NoDownloadDir,
    #[error("no data directory is known for this user: pass --state-dir DIR")]
    NoStateDir,
    #[error("no runtime directory for the socket: set XDG_RUNTIME_DIR or pass --socket PATH")]
    NoSocketDir,
    #[error(
        "a rendezvous CA needs a wss:// rendezvous: set rendezvous = \"wss://HOST:PORT\" (or --rendezvous) as well"
    )]
    CaWithoutTls,
    #[error("force_relay and require_direct cannot both be true in the config: choose one")]
    ConflictingPathPolicy,
    #[error(
        "`{0}` is no longer a setting (a transfer always uses one connection): remove it from the config file"
    )]
    Retired(&'static str),
    #[error(
        "device_name {0:?} is not usable: give 1 to 64 characters (at most 200 bytes) without control, invisible or filler characters or '/'"
    )]
    DeviceName(String),
    #[error(
        "sctp_window_bytes must be between 65536 and 268435456, not {0}: the default is 2097152"
    )]
    SctpWindow(u32),
    #[error(
        "sctp_window_max_bytes must be between sctp_window_bytes ({start}) and 268435456, not {given}: the default is 16777216"
    )]
    SctpWindowMax { given: u32, start: u32 },
    /// A rendezvous capacity of zero (`--max-connections 0` and the like).
    #[error("{0} must be at least 1 (0 would refuse every daemon)")]
    ZeroCapacity(&'static str),
}

/// Parses a config file's text; the error names the file and the offending key.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // "line N: …": where to look, since the message names the key but not its place.
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        ConfigError::Parse {
            path: path.to_owned(),
            message: match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            },
        }
    })
}

/// Keys retired with striping (one connection per transfer): refused with a line saying
/// so. Checked before the keys are matched, so an unknown key's error lists only the keys
/// there are (issue #29: it listed these as expected).
const RETIRED_KEYS: [&str; 2] = ["lanes", "stripe_from_rtt_ms"];

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let table: toml::Table = parse_toml(text, path)?;
        if let Some(retired) = RETIRED_KEYS.into_iter().find(|k| table.contains_key(*k)) {
            return Err(ConfigError::Retired(retired));
        }
        // Parsed again from the text (not the table), so an error keeps its line.
        parse_toml(text, path)
    }

    /// Loads `explicit` (which must exist), else the default file if there is one.
    pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let (path, required) = match explicit {
            Some(path) => (path.to_owned(), true),
            None => match project_dirs() {
                Some(dirs) => (dirs.config_dir().join("config.toml"), false),
                None => return Ok(FileConfig::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => FileConfig::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

/// A key that takes one value or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMore {
    One(String),
    More(Vec<String>),
}

impl OneOrMore {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMore::One(one) => vec![one],
            OneOrMore::More(more) => more,
        }
    }
}

/// Where the rendezvous comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RendezvousMode {
    /// Hosted inside the daemon on this address.
    Embedded { listen: SocketAddr },
    /// Another server's WebSocket URL, and for `wss://` a private CA to trust instead of
    /// the system's roots.
    /// One rendezvous, at one or more instances (tried in turn: `client::Instances`).
    Remote {
        urls: Vec<String>,
        ca: Option<PathBuf>,
    },
}

/// Validated settings the daemon runs on.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub download_dir: PathBuf,
    pub rendezvous: RendezvousMode,
    pub code_ttl: Duration,
    /// The identity key, pairings and durable job records live here.
    pub state_dir: PathBuf,
    /// Where an older version may have kept that state, moved into `state_dir` on the
    /// first start (`daemon::migrate`); empty when the user chose `state_dir`.
    pub earlier_state_dirs: Vec<PathBuf>,
    pub resume_window: Duration,
    /// How long a send to a paired device waits for it to come online.
    pub device_wait: Duration,
    pub rtc: RtcSettings,
    pub limits: Limits,
    /// The path policy of transfers whose request does not choose one.
    pub path_policy: PathPolicy,
    /// The name paired devices see.
    pub device_name: String,
    /// Announce on the LAN, find nearby daemons, take nearby offers.
    pub lan_discovery: bool,
}

/// Values given on the command line (or through the environment, via clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub download_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub resume_window_secs: Option<u64>,
    pub device_wait_secs: Option<u64>,
    /// Instances given on the command line (`--rendezvous`, repeatable); none: the file's.
    pub rendezvous: Vec<String>,
    pub rendezvous_ca: Option<PathBuf>,
    pub rendezvous_listen: Option<SocketAddr>,
    pub code_ttl_secs: Option<u64>,
    pub ice_bind: Vec<String>,
    pub udp_buffer_bytes: Option<usize>,
    pub sctp_window_bytes: Option<u32>,
    pub sctp_window_max_bytes: Option<u32>,
    pub sctp_recovery: Option<crate::rtc::sctp::SctpRecovery>,
    pub max_files: Option<usize>,
    pub max_total_bytes: Option<u64>,
    pub max_file_bytes: Option<u64>,
    pub device_name: Option<String>,
    /// `--no-lan-discovery`.
    pub no_lan_discovery: bool,
}

impl DaemonConfig {
    pub fn resolve(flags: Overrides, file: FileConfig) -> Result<DaemonConfig, ConfigError> {
        let socket = flags
            .socket
            .or(file.socket)
            .unwrap_or_else(default_socket_path);
        let download_dir = match flags.download_dir.or(file.download_dir) {
            Some(dir) => dir,
            None => default_download_dir()?,
        };
        let (state_dir, earlier_state_dirs) = match flags.state_dir.or(file.state_dir) {
            Some(dir) => (dir, Vec::new()),
            None => (default_state_dir()?, earlier_state_dirs()),
        };
        let resume_window = Duration::from_secs(
            flags
                .resume_window_secs
                .or(file.resume_window_secs)
                .unwrap_or(DEFAULT_RESUME_WINDOW.as_secs()),
        );
        let device_wait = Duration::from_secs(
            flags
                .device_wait_secs
                .or(file.device_wait_secs)
                .unwrap_or(DEFAULT_DEVICE_WAIT.as_secs()),
        );
        let ca = flags.rendezvous_ca.or(file.rendezvous_ca);
        let urls = match (flags.rendezvous, file.rendezvous) {
            (flags, _) if !flags.is_empty() => Some(flags),
            (_, Some(file)) => Some(file.into_vec()).filter(|urls| !urls.is_empty()),
            (_, None) => None,
        };
        let rendezvous = match urls {
            Some(urls) => {
                let tls = |url: &String| {
                    url.get(..6)
                        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("wss://"))
                };
                if ca.is_some() && !urls.iter().all(tls) {
                    return Err(ConfigError::CaWithoutTls);
                }
                RendezvousMode::Remote { urls, ca }
            }
            None if ca.is_some() => return Err(ConfigError::CaWithoutTls),
            None => RendezvousMode::Embedded {
                listen: flags
                    .rendezvous_listen
                    .or(file.rendezvous_listen)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            },
        };
        let code_ttl = Duration::from_secs(
            flags
                .code_ttl_secs
                .or(file.code_ttl_secs)
                .unwrap_or(DEFAULT_CODE_TTL.as_secs()),
        );
        let bind = if !flags.ice_bind.is_empty() {
            flags.ice_bind
        } else {
            file.ice_bind
                .unwrap_or_else(|| vec!["0.0.0.0:0".to_owned()])
        };
        let path_policy = match (
            file.force_relay.unwrap_or(false),
            file.require_direct.unwrap_or(false),
        ) {
            (true, true) => return Err(ConfigError::ConflictingPathPolicy),
            (true, false) => PathPolicy::ForceRelay,
            (false, true) => PathPolicy::RequireDirect,
            (false, false) => PathPolicy::Default,
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_files: flags
                .max_files
                .or(file.max_files)
                .unwrap_or(defaults.max_files),
            max_total_bytes: flags
                .max_total_bytes
                .or(file.max_total_bytes)
                .unwrap_or(defaults.max_total_bytes),
            max_file_bytes: flags
                .max_file_bytes
                .or(file.max_file_bytes)
                .unwrap_or(defaults.max_file_bytes),
        };
        let sctp_window_bytes = flags
            .sctp_window_bytes
            .or(file.sctp_window_bytes)
            .unwrap_or(crate::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES);
        if !(64 * 1024..=256 * 1024 * 1024).contains(&sctp_window_bytes) {
            return Err(ConfigError::SctpWindow(sctp_window_bytes));
        }
        let sctp_window_max_bytes = match flags.sctp_window_max_bytes.or(file.sctp_window_max_bytes)
        {
            Some(given) if !(sctp_window_bytes..=256 * 1024 * 1024).contains(&given) => {
                return Err(ConfigError::SctpWindowMax {
                    given,
                    start: sctp_window_bytes,
                });
            }
            Some(given) => given,
            // A starting window above the default cap grows no further.
            None => crate::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES.max(sctp_window_bytes),
        };
        let device_name = match flags.device_name.or(file.device_name) {
            Some(name) if crate::devices::registry::valid_device_name(&name) => name,
            Some(name) => {
                return Err(ConfigError::DeviceName(crate::terminal::escape_controls(
                    &name,
                )));
            }
            None => host_name(),
        };
        let lan_discovery = !flags.no_lan_discovery && file.lan_discovery.unwrap_or(true);
        Ok(DaemonConfig {
            lan_discovery,
            device_name,
            limits,
            socket,
            download_dir,
            rendezvous,
            code_ttl,
            state_dir,
            earlier_state_dirs,
            resume_window,
            device_wait,
            rtc: RtcSettings {
                ice_servers: file.ice_servers,
                bind,
                relay_only: false,
                udp_buffer_bytes: flags
                    .udp_buffer_bytes
                    .or(file.udp_buffer_bytes)
                    .unwrap_or(crate::rtc::runtime::UDP_SOCKET_BUFFER_BYTES),
                sctp_window_bytes,
                sctp_window_max_bytes,
                sctp_recovery: flags
                    .sctp_recovery
                    .or(file.sctp_recovery)
                    .unwrap_or_default(),
                remote_candidates: Default::default(),
            },
            path_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = FileConfig::parse("downlaod_dir = \"/tmp\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("downlaod_dir"), "{err}");
    }

    #[test]
    fn retired_and_out_of_range_values_are_refused() {
        let resolve = |text: &str| {
            let file = FileConfig::parse(text, Path::new("c.toml"))?;
            let flags = Overrides {
                download_dir: Some("/d".into()),
                state_dir: Some("/s".into()),
                socket: Some("/s.sock".into()),
                ..Overrides::default()
            };
            DaemonConfig::resolve(flags, file)
        };
        let anywhere = resolve("ice_bind = [\"0.0.0.0:0\"]").unwrap();
        for bad in [
            "sctp_window_bytes = 1000",
            "sctp_window_max_bytes = 1000",
            "sctp_window_bytes = 4194304\nsctp_window_max_bytes = 2097152",
        ] {
            let error = resolve(bad).unwrap_err().to_string();
            assert!(error.contains("must be between"), "{bad}: {error}");
        }
        let big_start = resolve("sctp_window_bytes = 33554432").unwrap();
        assert_eq!(big_start.rtc.sctp_window_max_bytes, 32 << 20);
        for retired in ["lanes = 16", "stripe_from_rtt_ms = 5"] {
            let error = resolve(retired).unwrap_err().to_string();
            assert!(error.contains("no longer a setting"), "{retired}: {error}");
        }
        let unknown = resolve("lane = 2").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `lane`"), "{unknown}");
        assert!(
            !RETIRED_KEYS
                .iter()
                .any(|k| unknown.contains(&format!("`{k}`"))),
            "retired keys are not expected ones: {unknown}"
        );
        assert_eq!(
            anywhere.rtc.sctp_recovery,
            crate::rtc::sctp::SctpRecovery::Bbr
        );
        let upstream = resolve("sctp_recovery = \"upstream\"").unwrap();
        assert_eq!(
            upstream.rtc.sctp_recovery,
            crate::rtc::sctp::SctpRecovery::Upstream
        );
        assert!(FileConfig::parse("sctp_recovery = \"fast\"", Path::new("c.toml")).is_err());
    }

    #[test]
    fn every_key_parses() {
        let text = r#"
            socket = "/run/p2pd.sock"
            download_dir = "/data"
            rendezvous = "wss://example.org:9009"
            rendezvous_ca = "/etc/p2pd/ca.pem"
            rendezvous_listen = "0.0.0.0:9009"
            code_ttl_secs = 60
            ice_bind = ["127.0.0.1:0"]
            udp_buffer_bytes = 0
            sctp_window_bytes = 8388608
            sctp_window_max_bytes = 67108864
            max_files = 10
            max_total_bytes = 1000
            max_file_bytes = 100
            [[ice_servers]]
            urls = ["turn:turn.example.org:3478"]
            username = "u"
            credential = "p"
        "#;
        let file = FileConfig::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(file.ice_servers[0].username, "u");
        let config = DaemonConfig::resolve(Overrides::default(), file).unwrap();
        assert_eq!(
            config.rendezvous,
            RendezvousMode::Remote {
                urls: vec!["wss://example.org:9009".into()],
                ca: Some("/etc/p2pd/ca.pem".into()),
            }
        );
        let several = FileConfig::parse(
            "rendezvous = [\"ws://a.example:9009\", \"ws://b.example:9009\"]",
            Path::new("c.toml"),
        )
        .unwrap();
        let flags = Overrides {
            download_dir: Some("/d".into()),
            state_dir: Some("/s".into()),
            ..Overrides::default()
        };
        assert_eq!(
            DaemonConfig::resolve(flags, several).unwrap().rendezvous,
            RendezvousMode::Remote {
                urls: vec!["ws://a.example:9009".into(), "ws://b.example:9009".into()],
                ca: None,
            }
        );
        assert_eq!(config.code_ttl, Duration::from_secs(60));
        assert_eq!(config.rtc.bind, vec!["127.0.0.1:0".to_owned()]);
        assert_eq!(config.rtc.udp_buffer_bytes, 0);
        assert_eq!(config.rtc.sctp_window_bytes, 8 << 20);
        assert_eq!(config.rtc.sctp_window_max_bytes, 64 << 20);
        assert_eq!(
            config.limits,
            Limits {
                max_files: 10,
                max_total_bytes: 1000,
                max_file_bytes: 100
            }
        );
    }

    #[test]
    fn path_policy_keys_set_the_default_and_cannot_both_hold() {
        let file = FileConfig::parse("require_direct = true\n", Path::new("c.toml")).unwrap();
        let config = DaemonConfig::resolve(Overrides::default(), file).unwrap();
        assert_eq!(config.path_policy, PathPolicy::RequireDirect);
        let both = FileConfig::parse(
            "force_relay = true\nrequire_direct = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert!(matches!(
            DaemonConfig::resolve(Overrides::default(), both),
            Err(ConfigError::ConflictingPathPolicy)
        ));
    }

    #[test]
    fn a_rendezvous_ca_needs_a_wss_rendezvous() {
        for text in [
            "rendezvous_ca = \"/ca.pem\"\n",
            "rendezvous = \"ws://h:1\"\nrendezvous_ca = \"/ca.pem\"\n",
        ] {
            let file = FileConfig::parse(text, Path::new("c.toml")).unwrap();
            assert!(matches!(
                DaemonConfig::resolve(Overrides::default(), file),
                Err(ConfigError::CaWithoutTls)
            ));
        }
    }

    #[test]
    fn flags_beat_the_file() {
        let file = FileConfig {
            download_dir: Some("/file".into()),
            code_ttl_secs: Some(5),
            ..Default::default()
        };
        let flags = Overrides {
            download_dir: Some("/flag".into()),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(flags, file).unwrap();
        assert_eq!(config.download_dir, PathBuf::from("/flag"));
        assert_eq!(config.code_ttl, Duration::from_secs(5));
        assert!(matches!(config.rendezvous, RendezvousMode::Embedded { .. }));
    }
}
