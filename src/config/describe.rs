//! The resolved settings, as `p2pd --check-config` prints them: one `key = value` line
//! each, in the config file's own key names and TOML syntax, so the output can be pasted
//! back into a file. Credentials are never printed.

use std::fmt::Write as _;

use super::{DaemonConfig, RendezvousMode};
use crate::ipc::messages::PathPolicy;

/// A TOML string: quoted, with `"` and `\` and controls escaped.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn path(path: &std::path::Path) -> String {
    quoted(&path.display().to_string())
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", items.join(", "))
}

pub fn describe(config: &DaemonConfig) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key} = {value}");
    };
    line("socket", path(&config.socket));
    line("download_dir", path(&config.download_dir));
    line("state_dir", path(&config.state_dir));
    match &config.rendezvous {
        RendezvousMode::Embedded { listen } => {
            line("rendezvous_listen", quoted(&listen.to_string()));
        }
        RendezvousMode::Remote { urls, ca } => {
            line("rendezvous", list(urls));
            if let Some(ca) = ca {
                line("rendezvous_ca", path(ca));
            }
        }
    }
    line("code_ttl_secs", config.code_ttl.as_secs().to_string());
    line(
        "resume_window_secs",
        config.resume_window.as_secs().to_string(),
    );
    line("device_wait_secs", config.device_wait.as_secs().to_string());
    line("device_name", quoted(&config.device_name));
    line("lan_discovery", config.lan_discovery.to_string());
    line(
        "force_relay",
        (config.path_policy == PathPolicy::ForceRelay).to_string(),
    );
    line(
        "require_direct",
        (config.path_policy == PathPolicy::RequireDirect).to_string(),
    );
    // No limit is the key left out (TOML integers stop at 2^63).
    let mut limit = |key: &str, value: u64| match value {
        u64::MAX => {
            let _ = writeln!(out, "# {key}: no limit");
        }
        value => {
            let _ = writeln!(out, "{key} = {value}");
        }
    };
    limit(
        "max_files",
        u64::try_from(config.limits.max_files).unwrap_or(u64::MAX),
    );
    limit("max_total_bytes", config.limits.max_total_bytes);
    limit("max_file_bytes", config.limits.max_file_bytes);
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key} = {value}");
    };
    line("ice_bind", list(&config.rtc.bind));
    // Servers by URL only: a TURN credential stays in the file.
    let servers: Vec<String> = config
        .rtc
        .ice_servers
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect();
    line("ice_servers", list(&servers));
    line("udp_buffer_bytes", config.rtc.udp_buffer_bytes.to_string());
    line(
        "sctp_window_bytes",
        config.rtc.sctp_window_bytes.to_string(),
    );
    line(
        "sctp_window_max_bytes",
        config.rtc.sctp_window_max_bytes.to_string(),
    );
    line("sctp_recovery", quoted(config.rtc.sctp_recovery.name()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};
    use std::path::Path;

    #[test]
    fn every_line_is_toml_a_config_file_accepts_again() {
        let file = FileConfig::parse(
            "device_name = \"desk \\\"top\\\"\"\nmax_files = 7\nrendezvous = [\"wss://a.example:9009\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let overrides = Overrides {
            socket: Some("/run/p2pd.sock".into()),
            download_dir: Some("/srv/in".into()),
            state_dir: Some("/var/lib/p2pd".into()),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(overrides, file).unwrap();
        let text = describe(&config);
        assert!(text.contains("max_files = 7\n"), "{text}");
        assert!(text.contains("device_name = "), "{text}");
        assert!(
            text.contains("rendezvous = [\"wss://a.example:9009\"]\n"),
            "{text}"
        );
        // Everything but the server list (printed without credentials) reads back.
        let again: String = text
            .lines()
            .filter(|l| !l.starts_with("ice_servers"))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed = FileConfig::parse(&again, Path::new("again.toml")).unwrap();
        let resolved = DaemonConfig::resolve(Overrides::default(), parsed).unwrap();
        assert_eq!(describe(&resolved), text);
    }
}
