//! `p2pd rendezvous`'s own config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, parse_toml};

/// The standalone rendezvous server's config file (`p2pd rendezvous --config PATH`). Its
/// flags have the same names; a flag given on the command line wins, and a list given on
/// the command line replaces the file's.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RendezvousFileConfig {
    pub listen: Option<SocketAddr>,
    pub code_ttl_secs: Option<u64>,
    /// STUN servers handed to every paired daemon, like `["stun:turn.example.org:3478"]`.
    #[serde(default)]
    pub stun: Vec<String>,
    /// TURN servers handed out with short-lived credentials (needs `turn_secret_file`).
    #[serde(default)]
    pub turn: Vec<String>,
    /// File holding the TURN server's shared secret (coturn's `static-auth-secret`).
    pub turn_secret_file: Option<PathBuf>,
    pub turn_credential_ttl_secs: Option<u64>,
    /// PEM certificate chain to serve `wss://` with (needs `tls_key`); reread on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Where codes and pairings are kept: `memory` (the default) or a Redis URL
    /// (`redis://HOST:PORT`, `rediss://…`, `redis+unix:///PATH`) shared by several
    /// instances.
    pub store: Option<String>,
    /// PEM file of a private CA a `rediss://` store's certificate is checked against.
    pub store_ca: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub max_pairs_per_address: Option<usize>,
    pub requests_per_minute: Option<u32>,
}

/// What a standalone rendezvous holds unless told otherwise (`p2pd rendezvous
/// --max-connections` and the rest). Sized for a service: one instance holds 10,000 idle
/// daemons (measured in `cluster::one_instance_holds_ten_thousand_idle_daemons`), and an
/// office behind one NAT address (a hundred daemons, each holding a connection per
/// paired device while it waits) is not locked out. The embedded rendezvous of `p2pd`
/// keeps the smaller `RendezvousConfig::default`.
pub const SERVICE_MAX_CONNECTIONS: usize = 10_000;
pub const SERVICE_CONNECTIONS_PER_ADDRESS: usize = 512;
/// Connections in a pair at once from one address: a pair is minutes long, so this is
/// an office's concurrent transfers.
pub const SERVICE_PAIRS_PER_ADDRESS: usize = 64;
/// Allocations, and claims or rejoins, each, per address and minute.
pub const SERVICE_REQUESTS_PER_MINUTE: u32 = 120;

/// How long a TURN credential handed out by `p2pd rendezvous` stays valid unless
/// `--turn-credential-ttl` says otherwise: a pair's signaling lasts minutes (issue #23:
/// minutes, not hours).
pub const DEFAULT_TURN_CREDENTIAL_TTL_SECS: u64 = 600;

/// A rendezvous's capacity: its connection cap and per-address limits.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub max_connections: usize,
    pub per_address: crate::rendezvous::limits::PerAddressLimits,
}

/// The flags of the capacity, each `None` when not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapacityFlags {
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub max_pairs_per_address: Option<usize>,
    pub requests_per_minute: Option<u32>,
}

impl Capacity {
    /// Flags win over the file, the file over the service defaults. A zero would refuse
    /// everyone: it is an error that says so.
    pub fn resolve(
        flags: CapacityFlags,
        file: &RendezvousFileConfig,
    ) -> Result<Capacity, ConfigError> {
        let positive = |value: usize, key: &'static str| {
            if value == 0 {
                Err(ConfigError::ZeroCapacity(key))
            } else {
                Ok(value)
            }
        };
        let max_connections = positive(
            flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(SERVICE_MAX_CONNECTIONS),
            "max_connections",
        )?;
        let connections = positive(
            flags
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(SERVICE_CONNECTIONS_PER_ADDRESS),
            "max_connections_per_address",
        )?;
        let paired = positive(
            flags
                .max_pairs_per_address
                .or(file.max_pairs_per_address)
                .unwrap_or(SERVICE_PAIRS_PER_ADDRESS)
                .saturating_mul(2),
            "max_pairs_per_address",
        )?;
        let per_minute = flags
            .requests_per_minute
            .or(file.requests_per_minute)
            .unwrap_or(SERVICE_REQUESTS_PER_MINUTE);
        let per_minute = positive(per_minute as usize, "requests_per_minute")? as u32;
        Ok(Capacity {
            max_connections,
            per_address: crate::rendezvous::limits::PerAddressLimits {
                connections,
                paired,
                allocations_per_minute: per_minute,
                claims_per_minute: per_minute,
            },
        })
    }
}

impl RendezvousFileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<RendezvousFileConfig, ConfigError> {
        parse_toml(text, path)
    }

    /// Loads `path`, or nothing: the rendezvous has no default config file, since the
    /// daemon's own file has other keys.
    pub fn load(path: Option<&Path>) -> Result<RendezvousFileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(RendezvousFileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        RendezvousFileConfig::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rendezvous_key_parses_and_unknown_ones_are_refused() {
        let text = r#"
            listen = "0.0.0.0:9009"
            code_ttl_secs = 300
            stun = ["stun:turn.example.org:3478"]
            turn = ["turn:turn.example.org:3478"]
            turn_secret_file = "/etc/p2pd/turn-secret"
            turn_credential_ttl_secs = 3600
            tls_cert = "/etc/p2pd/cert.pem"
            tls_key = "/etc/p2pd/key.pem"
            store = "redis://10.0.0.5:6379"
        "#;
        let file = RendezvousFileConfig::parse(text, Path::new("r.toml")).unwrap();
        assert_eq!(file.store.as_deref(), Some("redis://10.0.0.5:6379"));
        assert_eq!(file.turn, ["turn:turn.example.org:3478"]);
        assert_eq!(file.tls_key, Some(PathBuf::from("/etc/p2pd/key.pem")));
        assert_eq!(file.turn_credential_ttl_secs, Some(3600));
        let err =
            RendezvousFileConfig::parse("turn_secret = \"x\"\n", Path::new("r.toml")).unwrap_err();
        assert!(err.to_string().contains("turn_secret"), "{err}");
    }

    /// The packaged /etc/p2pd/rendezvous.toml names every key, commented, with the value
    /// the rendezvous uses when it is left out.
    #[test]
    fn the_packaged_config_lists_every_key_with_its_default() {
        let packaged = include_str!("../../packaging/rendezvous.toml");
        let uncommented: String = packaged
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = RendezvousFileConfig::parse(&uncommented, Path::new("rendezvous.toml"))
            .expect("every uncommented key is one the rendezvous takes");
        let keys: Vec<&str> = uncommented
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        for key in [
            "listen",
            "code_ttl_secs",
            "stun",
            "turn",
            "turn_secret_file",
            "turn_credential_ttl_secs",
            "tls_cert",
            "tls_key",
            "store",
            "store_ca",
            "max_connections",
            "max_connections_per_address",
            "max_pairs_per_address",
            "requests_per_minute",
        ] {
            assert!(keys.contains(&key), "{key} is missing");
        }
        assert_eq!(file.max_connections, Some(SERVICE_MAX_CONNECTIONS));
        assert_eq!(
            file.max_connections_per_address,
            Some(SERVICE_CONNECTIONS_PER_ADDRESS)
        );
        assert_eq!(file.max_pairs_per_address, Some(SERVICE_PAIRS_PER_ADDRESS));
        assert_eq!(file.requests_per_minute, Some(SERVICE_REQUESTS_PER_MINUTE));
        assert_eq!(
            file.turn_credential_ttl_secs,
            Some(DEFAULT_TURN_CREDENTIAL_TTL_SECS)
        );
        assert_eq!(
            file.code_ttl_secs,
            Some(crate::config::DEFAULT_CODE_TTL.as_secs())
        );
        assert_eq!(file.store.as_deref(), Some("memory"));
        assert_eq!(file.listen, Some(([0, 0, 0, 0], 9009).into()));
    }

    #[test]
    fn capacity_flags_win_over_the_file_over_the_service_defaults() {
        let none = RendezvousFileConfig::default();
        let defaults = Capacity::resolve(CapacityFlags::default(), &none).unwrap();
        assert_eq!(defaults.max_connections, SERVICE_MAX_CONNECTIONS);
        assert_eq!(
            defaults.per_address.connections,
            SERVICE_CONNECTIONS_PER_ADDRESS
        );
        // Counted in connections: two per pair.
        assert_eq!(defaults.per_address.paired, 2 * SERVICE_PAIRS_PER_ADDRESS);
        assert_eq!(
            defaults.per_address.claims_per_minute,
            SERVICE_REQUESTS_PER_MINUTE
        );
        let file = RendezvousFileConfig::parse(
            "max_connections = 20000\nmax_pairs_per_address = 8\n",
            Path::new("r.toml"),
        )
        .unwrap();
        let flags = CapacityFlags {
            max_connections: Some(30_000),
            ..Default::default()
        };
        let resolved = Capacity::resolve(flags, &file).unwrap();
        assert_eq!(resolved.max_connections, 30_000);
        assert_eq!(resolved.per_address.paired, 16);
        let zero = CapacityFlags {
            requests_per_minute: Some(0),
            ..Default::default()
        };
        let refused = Capacity::resolve(zero, &none).unwrap_err().to_string();
        assert!(refused.contains("requests_per_minute"), "{refused}");
    }
}
