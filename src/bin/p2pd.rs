//! `p2pd`: the daemon, or with `rendezvous` a standalone rendezvous server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use p2pd::config::{
    Capacity, CapacityFlags, DaemonConfig, FileConfig, Overrides, RendezvousFileConfig,
};
use p2pd::daemon::Daemon;
use p2pd::rendezvous::ice::IceHandout;
use p2pd::rendezvous::server::{self, RendezvousConfig};
use p2pd::rendezvous::store::StoreKind;
use p2pd::rendezvous::tls::ServerTls;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "p2pd", version, about = "Peer-to-peer file transfer daemon")]
struct Args {
    /// Control socket path (the daemon's; `p2pd rendezvous` has none).
    #[arg(long, env = "P2PD_SOCKET")]
    socket: Option<PathBuf>,
    /// Config file (TOML). Default: the user's config dir, p2pd/config.toml, if present;
    /// `p2pd rendezvous` reads one only when given.
    #[arg(long, env = "P2PD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where received files go. Default: the user's download directory.
    #[arg(long)]
    download_dir: Option<PathBuf>,
    /// Use this rendezvous instead of the embedded one, e.g. ws://host:9009, or
    /// wss://host:9009 for TLS (checked against the system's root certificates).
    /// Given several times: instances of one rendezvous (sharing a store), tried in turn.
    #[arg(long, conflicts_with = "rendezvous_listen")]
    rendezvous: Vec<String>,
    /// PEM file of a private CA to check a wss:// rendezvous's certificate against, instead
    /// of the system's roots.
    #[arg(long, value_name = "FILE")]
    rendezvous_ca: Option<PathBuf>,
    /// Address the embedded rendezvous listens on, e.g. 0.0.0.0:9009 for a LAN.
    #[arg(long)]
    rendezvous_listen: Option<SocketAddr>,
    /// Seconds an unused code stays valid (default 600).
    #[arg(long)]
    code_ttl: Option<u64>,
    /// Where the identity key, paired devices and unfinished jobs live. Default:
    /// $STATE_DIRECTORY under systemd, else $XDG_STATE_HOME/p2pd (~/.local/state/p2pd),
    /// the same run by hand or as the unit; an older version's is moved in on first start.
    #[arg(long, env = "P2PD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds an interrupted job keeps trying to resume before it fails (default 24 h).
    #[arg(long)]
    resume_window: Option<u64>,
    /// Do not announce this daemon on the LAN (mDNS) nor take offers from nearby devices;
    /// p2p nearby then finds nothing.
    #[arg(long)]
    no_lan_discovery: bool,
    /// Seconds `p2p send --to NAME` waits for an offline device to come online (default 24 h).
    #[arg(long)]
    device_wait: Option<u64>,
    /// Local UDP address for WebRTC (repeatable). Default: 0.0.0.0:0, every interface.
    #[arg(long)]
    ice_bind: Vec<String>,
    /// Send and receive buffer of each WebRTC UDP socket, in bytes (default 4 MiB; 0 leaves
    /// the kernel's default).
    #[arg(long)]
    udp_buffer_bytes: Option<usize>,
    /// SCTP receive window a transfer's connection starts with, in bytes (default 2 MiB).
    #[arg(long)]
    sctp_window_bytes: Option<u32>,
    /// How far that window may grow while the receiver keeps up, in bytes (default 16 MiB;
    /// equal to the starting window keeps it fixed).
    #[arg(long)]
    sctp_window_max_bytes: Option<u32>,
    /// SCTP loss recovery and congestion control, cumulative steps (docs/TRANSPORT.md):
    /// upstream (rtc-sctp 0.21.1 as released), rto (200 ms RTO floor), rack (also RACK-TLP
    /// and window-update SACKs, Reno), bbr (rack with BBR-style pacing; the default).
    #[arg(long, value_parser = |s: &str| s.parse::<p2pd::rtc::sctp::SctpRecovery>())]
    sctp_recovery: Option<p2pd::rtc::sctp::SctpRecovery>,
    /// Refuse offers with more files than this.
    #[arg(long)]
    max_files: Option<usize>,
    /// Refuse offers larger than this many bytes in total.
    #[arg(long)]
    max_total_bytes: Option<u64>,
    /// Refuse offers containing a file larger than this many bytes.
    #[arg(long)]
    max_file_bytes: Option<u64>,
    /// The name paired devices see (default: this machine's host name).
    #[arg(long, value_name = "NAME")]
    device_name: Option<String>,
    /// Check the settings and exit: reads FILE (else --config, else the default file)
    /// with the flags given, prints the resolved settings as config lines (exit 0) or
    /// what is wrong, with its line and key (exit 1). `p2pd rendezvous --check-config`
    /// checks the rendezvous's, reading the files it names (TLS, TURN secret).
    #[arg(long, value_name = "FILE", num_args = 0..=1, global = true)]
    check_config: Option<Option<PathBuf>>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
// Parsed once at start and matched at once: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Write the manual pages (p2pd.1, p2pd-rendezvous.1) into a directory, e.g.
    /// `p2pd man ~/.local/share/man/man1`.
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
    /// Run only the rendezvous server. Every flag has a key of the same name in its
    /// --config file (code_ttl_secs, turn_credential_ttl_secs); flags win.
    Rendezvous(RendezvousArgs),
}

/// `p2pd rendezvous`'s flags.
#[derive(clap::Args)]
struct RendezvousArgs {
    /// Address to listen on [default: 0.0.0.0:9009].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Seconds an unclaimed code stays valid [default: 600].
    #[arg(long)]
    code_ttl: Option<u64>,
    /// STUN server handed to every paired daemon, e.g. stun:203.0.113.1:3478 (repeatable).
    #[arg(long)]
    stun: Vec<String>,
    /// TURN server handed out with short-lived credentials, e.g. turn:203.0.113.1:3478
    /// (repeatable; needs --turn-secret-file).
    #[arg(long)]
    turn: Vec<String>,
    /// File holding the TURN server's shared secret (coturn's static-auth-secret).
    #[arg(long)]
    turn_secret_file: Option<PathBuf>,
    /// Seconds a handed-out TURN credential stays valid [default: 600].
    #[arg(long)]
    turn_credential_ttl: Option<u64>,
    /// Serve wss:// with this PEM certificate chain (needs --tls-key); SIGHUP rereads
    /// both files.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Where codes and pairings are kept: memory (this process alone), or Redis/Valkey
    /// shared by several instances behind one name: redis://HOST:PORT,
    /// rediss://HOST:PORT or redis+unix:///PATH (a URL with a password belongs in
    /// the config file) [default: memory].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// PEM file of a private CA to check a rediss:// store's certificate against, instead
    /// of the system's roots.
    #[arg(long, value_name = "FILE")]
    store_ca: Option<PathBuf>,
    /// Connections held at once; when full, the longest idle gives way [default: 10000].
    /// The open-file limit is raised to its ceiling at start; it must allow this many.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections from one address (an IPv6 /64) at once [default: 512].
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// Pairs (transfers being set up) from one address at once [default: 64].
    #[arg(long, value_name = "N")]
    max_pairs_per_address: Option<usize>,
    /// Codes allocated, and codes claimed or jobs resumed, each, per address and
    /// minute [default: 120].
    #[arg(long, value_name = "N")]
    requests_per_minute: Option<u32>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,p2pd=info")),
        )
        .with_writer(std::io::stderr)
        // journald and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let version: &'static str = Box::leak(
        format!(
            "{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            p2pd::rtc::peer::CHANNEL_LABEL
        )
        .into_boxed_str(),
    );
    let command = Args::command().version(version);
    let args = match Args::from_arg_matches(&command.clone().get_matches()) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    if let Some(Command::Man { dir }) = &args.command {
        let written =
            std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(command, dir));
        return match written {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!(
                    "error: cannot write manual pages into {}: {error}; pass a writable directory",
                    p2pd::terminal::escape_controls(&dir.display().to_string())
                );
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Paths in config errors are the user's own, but a terminal gets no raw controls anyway.
fn one_line(error: &anyhow::Error) -> String {
    let line = error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    p2pd::terminal::escape_controls(&line)
}

/// `p2pd rendezvous`'s settings from its flags and config file (`config`), every file it
/// names read and checked: what `run` serves with and `--check-config` reports.
fn rendezvous_settings(
    flags: RendezvousArgs,
    config: Option<&std::path::Path>,
) -> anyhow::Result<(SocketAddr, RendezvousConfig)> {
    let RendezvousArgs {
        listen,
        code_ttl,
        stun,
        turn,
        turn_secret_file,
        turn_credential_ttl,
        tls_cert,
        tls_key,
        store,
        store_ca,
        max_connections,
        max_connections_per_address,
        max_pairs_per_address,
        requests_per_minute,
    } = flags;
    let file = RendezvousFileConfig::load(config)?;
    let capacity = Capacity::resolve(
        CapacityFlags {
            max_connections,
            max_connections_per_address,
            max_pairs_per_address,
            requests_per_minute,
        },
        &file,
    )?;
    raise_open_files(capacity.max_connections);
    let listen = listen
        .or(file.listen)
        .unwrap_or(([0, 0, 0, 0], 9009).into());
    let code_ttl = code_ttl
        .or(file.code_ttl_secs)
        .unwrap_or(p2pd::config::DEFAULT_CODE_TTL.as_secs());
    let stun = if stun.is_empty() { file.stun } else { stun };
    let turn = if turn.is_empty() { file.turn } else { turn };
    let turn_secret_file = turn_secret_file.or(file.turn_secret_file);
    let turn_credential_ttl = turn_credential_ttl
        .or(file.turn_credential_ttl_secs)
        .unwrap_or(p2pd::config::rendezvous::DEFAULT_TURN_CREDENTIAL_TTL_SECS);
    anyhow::ensure!(
        turn.is_empty() || turn_secret_file.is_some(),
        "TURN servers need coturn's shared secret: pass --turn-secret-file PATH (or set turn_secret_file)"
    );
    let turn_secret = match &turn_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the TURN secret file {}", path.display()))?;
            let secret = text.trim();
            anyhow::ensure!(
                !secret.is_empty(),
                "the TURN secret file {} is empty: put coturn's static-auth-secret in it",
                path.display()
            );
            Some(secret.as_bytes().to_vec())
        }
        None => None,
    };
    let tls = match (tls_cert.or(file.tls_cert), tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(&cert, &key)?)),
        (None, None) => None,
        _ => anyhow::bail!(
            "TLS needs both a certificate and its key: pass --tls-cert FILE and --tls-key FILE (or set tls_cert and tls_key)"
        ),
    };
    let store: StoreKind = match store.or(file.store) {
        Some(text) => text.parse().map_err(anyhow::Error::msg)?,
        None => StoreKind::Memory,
    };
    let store_ca = match store_ca.or(file.store_ca) {
        Some(path) => {
            anyhow::ensure!(
                matches!(&store, StoreKind::Redis(url) if url.starts_with("rediss://")),
                "a store CA is for a rediss:// store: set store = \"rediss://HOST:PORT\" (or --store) as well"
            );
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read the store CA {}", path.display()))?;
            Some(pem)
        }
        None => None,
    };
    let config = RendezvousConfig {
        slot_ttl: Duration::from_secs(code_ttl),
        ice: IceHandout {
            stun,
            turn,
            turn_secret,
            credential_ttl: Duration::from_secs(turn_credential_ttl),
        },
        tls,
        store,
        store_ca,
        max_connections: capacity.max_connections,
        per_address: capacity.per_address,
        ..Default::default()
    };
    Ok((listen, config))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.check_config.is_some() {
        return check_config(args);
    }
    let stop = stop_on_signal()?;
    if let Some(Command::Rendezvous(flags)) = args.command {
        let (listen, config) = rendezvous_settings(flags, args.config.as_deref())?;
        raise_open_files(config.max_connections);
        reload_on_hangup(config.tls.clone())?;
        let (listener, activated) = server::listen(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        if activated {
            tracing::info!("listening on the socket systemd passed");
        }
        notify(sd_notify::NotifyState::Ready);
        server::serve(listener, config, stop).await;
        notify(sd_notify::NotifyState::Stopping);
        return Ok(());
    }
    let config = args.config.clone();
    let config = daemon_config(args, config.as_deref())?;
    let daemon = Daemon::start(config).await?;
    notify(sd_notify::NotifyState::Ready);
    let token = daemon.shutdown_token();
    tokio::spawn(async move {
        stop.cancelled().await;
        notify(sd_notify::NotifyState::Stopping);
        token.cancel();
    });
    daemon.run_until_stopped().await;
    Ok(())
}

/// The daemon's settings from its flags and its config file (`config`, else the default).
fn daemon_config(args: Args, config: Option<&std::path::Path>) -> anyhow::Result<DaemonConfig> {
    let file = FileConfig::load(config)?;
    let overrides = Overrides {
        socket: args.socket,
        download_dir: args.download_dir,
        state_dir: args.state_dir,
        resume_window_secs: args.resume_window,
        device_wait_secs: args.device_wait,
        no_lan_discovery: args.no_lan_discovery,
        rendezvous: args.rendezvous,
        rendezvous_ca: args.rendezvous_ca,
        rendezvous_listen: args.rendezvous_listen,
        code_ttl_secs: args.code_ttl,
        ice_bind: args.ice_bind,
        udp_buffer_bytes: args.udp_buffer_bytes,
        sctp_window_bytes: args.sctp_window_bytes,
        sctp_window_max_bytes: args.sctp_window_max_bytes,
        sctp_recovery: args.sctp_recovery,
        max_files: args.max_files,
        max_total_bytes: args.max_total_bytes,
        max_file_bytes: args.max_file_bytes,
        device_name: args.device_name,
    };
    Ok(DaemonConfig::resolve(overrides, file)?)
}

/// `--check-config [FILE]`: the daemon's settings, or the rendezvous's under `rendezvous`,
/// resolved and printed; an error (exit 1) says what is wrong.
fn check_config(mut args: Args) -> anyhow::Result<()> {
    let file = match args.check_config.take() {
        Some(Some(file)) => Some(file),
        _ => args.config.clone(),
    };
    match args.command.take() {
        Some(Command::Rendezvous(flags)) => {
            let (listen, config) = rendezvous_settings(flags, file.as_deref())?;
            print!("{}", describe_rendezvous(listen, &config));
        }
        Some(Command::Man { .. }) => {
            anyhow::bail!(
                "--check-config checks the daemon's settings, or the rendezvous's with p2pd rendezvous --check-config: not man's"
            )
        }
        None => print!(
            "{}",
            p2pd::config::describe(&daemon_config(args, file.as_deref())?)
        ),
    }
    Ok(())
}

/// The rendezvous's resolved settings as `rendezvous.toml` lines (no secret printed).
fn describe_rendezvous(listen: SocketAddr, config: &RendezvousConfig) -> String {
    let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let list = |items: &[String]| {
        let items: Vec<String> = items.iter().map(|i| quoted(i)).collect();
        format!("[{}]", items.join(", "))
    };
    let store = match &config.store {
        StoreKind::Memory => "memory".to_owned(),
        // A password stays in the file.
        StoreKind::Redis(url) => match url.split_once('@') {
            Some((scheme_and_user, host)) => {
                let scheme = scheme_and_user.split("://").next().unwrap_or("redis");
                format!("{scheme}://…@{host}")
            }
            None => url.clone(),
        },
    };
    [
        format!("listen = {}", quoted(&listen.to_string())),
        format!("code_ttl_secs = {}", config.slot_ttl.as_secs()),
        format!("stun = {}", list(&config.ice.stun)),
        format!("turn = {}", list(&config.ice.turn)),
        format!(
            "turn_credential_ttl_secs = {}",
            config.ice.credential_ttl.as_secs()
        ),
        match config.tls {
            Some(_) => "# serves wss:// (tls_cert and tls_key read)".to_owned(),
            None => "# serves ws:// (no tls_cert)".to_owned(),
        },
        format!("store = {}", quoted(&store)),
        format!("max_connections = {}", config.max_connections),
        format!(
            "max_connections_per_address = {}",
            config.per_address.connections
        ),
        format!("max_pairs_per_address = {}", config.per_address.paired / 2),
        format!(
            "requests_per_minute = {}",
            config.per_address.claims_per_minute
        ),
    ]
    .iter()
    .map(|line| format!("{line}\n"))
    .collect()
}

/// Raises the soft open-file limit to its ceiling (it is often 1024, far below a
/// service's connections), and says so when even the ceiling is below `connections`.
fn raise_open_files(connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "cannot raise the open-file limit");
    }
    // Each connection is one descriptor; a few dozen more serve the rest.
    let needed = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(64);
    if hard < needed {
        tracing::warn!(
            limit = hard,
            connections,
            "the open-file limit is below --max-connections: raise it (LimitNOFILE= in the unit) or lower --max-connections"
        );
    }
}

/// A token cancelled by the first SIGTERM or SIGINT.
/// Rereads the certificate and key on every SIGHUP (after a renewal); a file that fails to
/// load is logged and the certificate in use stays. Handled without TLS too, so a reload
/// (`systemctl reload`) never kills a plain `ws://` rendezvous.
fn reload_on_hangup(tls: Option<Arc<ServerTls>>) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.as_deref().map(ServerTls::reload) {
                Some(Ok(())) => tracing::info!("reloaded the TLS certificate"),
                Some(Err(error)) => tracing::warn!(%error, "kept the previous TLS certificate"),
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            }
        }
    });
    Ok(())
}

fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let trigger = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
        trigger.cancel();
    });
    Ok(token)
}

/// Tells systemd (`Type=notify`) how the service stands; nothing when not started by it.
fn notify(state: sd_notify::NotifyState) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd::config::rendezvous as capacity;

    /// `--help` states each capacity default: the numbers are the code's.
    #[test]
    fn the_rendezvous_help_states_the_capacity_defaults() {
        let mut command = Args::command();
        let help = command
            .find_subcommand_mut("rendezvous")
            .unwrap()
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (flag, default) in [
            (
                "--max-connections <N>",
                capacity::SERVICE_MAX_CONNECTIONS.to_string(),
            ),
            (
                "--max-connections-per-address <N>",
                capacity::SERVICE_CONNECTIONS_PER_ADDRESS.to_string(),
            ),
            (
                "--max-pairs-per-address <N>",
                capacity::SERVICE_PAIRS_PER_ADDRESS.to_string(),
            ),
            (
                "--requests-per-minute <N>",
                capacity::SERVICE_REQUESTS_PER_MINUTE.to_string(),
            ),
            (
                "--turn-credential-ttl <TURN_CREDENTIAL_TTL>",
                capacity::DEFAULT_TURN_CREDENTIAL_TTL_SECS.to_string(),
            ),
        ] {
            let text = help.split(flag).nth(1).expect(flag);
            let stated = text
                .split("[default: ")
                .nth(1)
                .and_then(|t| t.split(']').next());
            assert_eq!(stated, Some(default.as_str()), "{flag}");
        }
    }
}
