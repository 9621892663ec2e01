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
}
