//! The real binaries: exit codes, one-line errors, JSON events, signals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::random_file;

pub(crate) const P2P: &str = env!("CARGO_BIN_EXE_p2p");
pub(crate) const P2PD: &str = env!("CARGO_BIN_EXE_p2pd");

pub(crate) struct DaemonProcess {
    child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) downloads: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

impl DaemonProcess {
    pub(crate) fn start() -> DaemonProcess {
        DaemonProcess::start_as(&[])
    }

    /// `prefix` runs the daemon under another program, such as `setpriv` to drop root.
    fn start_as(prefix: &[&str]) -> DaemonProcess {
        DaemonProcess::start_with(prefix, "error")
    }

    /// The daemon's log (at `log_level`) goes to `log_path()`.
    fn start_with(prefix: &[&str], log_level: &str) -> DaemonProcess {
        DaemonProcess::start_in(tempfile::tempdir().unwrap(), prefix, log_level)
    }

    /// A daemon whose home is `dir`: socket in `run/` (which may already exist, as a
    /// mount point), downloads in `dl/`, state in the default `.local/state/p2pd`.
    pub(crate) fn start_in(
        dir: tempfile::TempDir,
        prefix: &[&str],
        log_level: &str,
    ) -> DaemonProcess {
        let socket = dir.path().join("run").join("p2pd.sock");
        let downloads = dir.path().join("dl");
        std::fs::create_dir(&downloads).unwrap();
        let child = DaemonProcess::spawn(dir.path(), &socket, &downloads, prefix, log_level);
        DaemonProcess {
            child,
            socket,
            downloads,
            dir,
        }
    }

    /// Where the daemon keeps its state: the default under its `HOME`.
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".local/state/p2pd")
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same socket, directories and
    /// state.
    pub(crate) fn restart(&mut self) {
        assert!(self.terminate().success());
        self.child =
            DaemonProcess::spawn(self.dir.path(), &self.socket, &self.downloads, &[], "error");
    }

    fn spawn(
        dir: &Path,
        socket: &Path,
        downloads: &Path,
        prefix: &[&str],
        log_level: &str,
    ) -> Child {
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(P2PD);
                c
            }
            None => Command::new(P2PD),
        };
        if !prefix.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            std::fs::set_permissions(downloads, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let child = command
            .args([
                "--socket",
                socket.to_str().unwrap(),
                "--download-dir",
                downloads.to_str().unwrap(),
            ])
            .args([
                "--rendezvous-listen",
                "127.0.0.1:0",
                "--ice-bind",
                "127.0.0.1:0",
            ])
            .env("HOME", dir)
            .env("RUST_LOG", log_level)
            .env_remove("P2PD_SOCKET")
            // Its state under its own HOME, whatever the environment running the tests says.
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("STATE_DIRECTORY")
            .env_remove("P2PD_STATE_DIR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("p2pd.log")).unwrap())
            .spawn()
            .expect("spawn p2pd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "p2pd did not create its socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("p2pd.log")).unwrap_or_default()
    }

    pub(crate) fn p2p(&self, args: &[&str]) -> Output {
        p2p_with_socket(&self.socket, args)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "p2pd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn p2p_with_socket(socket: &Path, args: &[&str]) -> Output {
    Command::new(P2P)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("P2PD_SOCKET")
        .output()
        .expect("run p2p")
}

/// Asserts a failed command printed exactly one line on stderr, containing `needle`.
pub(crate) fn assert_one_line_error(output: &Output, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit code; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
}

/// `p2p send ARGS` in the background: the child, its stdout after the first line, and that
/// first line parsed (with `--json`, the `created` event carrying the code).
pub(crate) fn spawn_json_send(
    socket: &Path,
    args: &[&str],
) -> (
    Child,
    BufReader<std::process::ChildStdout>,
    serde_json::Value,
) {
    let mut sender = Command::new(P2P)
        .arg("--socket")
        .arg(socket)
        .arg("send")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn p2p send");
    let mut stdout = BufReader::new(sender.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let created =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    (sender, stdout, created)
}

pub(crate) fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn events(values: &[serde_json::Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| v["event"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn daemon_not_running_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = p2p_with_socket(&dir.path().join("nothing.sock"), &["status"]);
    assert_one_line_error(&output, "p2pd is not running");
    assert!(String::from_utf8_lossy(&output.stderr).contains("start it with"));
}

#[test]
fn malformed_code_and_missing_consent_fail_before_contacting_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    assert_one_line_error(
        &p2p_with_socket(&socket, &["receive", "orbit-lantern", "--yes"]),
        "must start with a number",
    );
    assert_one_line_error(
        &p2p_with_socket(&socket, &["receive", "7-orbit", "--yes"]),
        "needs 2",
    );
    assert_one_line_error(
        &p2p_with_socket(&socket, &["receive", "7-orbit-lantern"]),
        "without asking",
    );
}

#[test]
fn bad_files_are_one_line_errors() {
    let daemon = DaemonProcess::start();
    let missing = daemon.dir.path().join("missing.bin");
    assert_one_line_error(
        &daemon.p2p(&["send", missing.to_str().unwrap()]),
        "no such file",
    );
    let fifo = daemon.dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    assert_one_line_error(
        &daemon.p2p(&["send", fifo.to_str().unwrap()]),
        "not a regular file or folder",
    );
    let status = daemon.p2p(&["status", "--json"]);
    assert!(status.status.success());
    assert!(
        status.stdout.is_empty(),
        "no job was created: {}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[test]
fn unreadable_file_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "locked.bin", 10, 1);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(src.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Root reads anything, so as root the daemon runs as nobody for this test.
    let is_root = unsafe { libc::geteuid() } == 0;
    let daemon = if is_root {
        DaemonProcess::start_as(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
    } else {
        DaemonProcess::start()
    };
    // p2p talks only to a daemon of its own user (or root's): as root, it runs as nobody too.
    let output = if is_root {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", P2P])
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["send", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .env_remove("P2PD_SOCKET")
            .output()
            .unwrap()
    } else {
        daemon.p2p(&["send", path.to_str().unwrap()])
    };
    assert_one_line_error(&output, "permission denied");
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let daemon = DaemonProcess::start();
    let output = Command::new(P2PD)
        .args([
            "--socket",
            daemon.socket.to_str().unwrap(),
            "--download-dir",
            daemon.downloads.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_one_line_error(&output, "another p2pd is already running");
}

#[test]
fn rendezvous_refuses_turn_without_its_secret_and_unknown_config_keys() {
    let output = Command::new(P2PD)
        .args([
            "rendezvous",
            "--listen",
            "127.0.0.1:0",
            "--turn",
            "turn:127.0.0.1:3478",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&output, "--turn-secret-file");
    // The same from the config file, and a misspelt key is named.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rendezvous.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nturn = [\"turn:127.0.0.1:3478\"]\n",
    )
    .unwrap();
    let output = Command::new(P2PD)
        .args(["rendezvous", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(&output, "--turn-secret-file");
    std::fs::write(&config, "turn_secrets_file = \"/etc/x\"\n").unwrap();
    let output = Command::new(P2PD)
        .args(["rendezvous", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(&output, "turn_secrets_file");
}

#[test]
fn json_send_and_receive_with_real_binaries_then_sigterm() {
    let mut daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "data.bin", 3 * 1024 * 1024 + 3, 11);
    let (mut sender, mut stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    assert_eq!(created["event"], "created");
    assert_eq!(created["direction"], "send");
    let code = created["code"]
        .as_str()
        .expect("code in the first event")
        .to_owned();

    let out = tempfile::tempdir().unwrap();
    let received = daemon.p2p(&[
        "receive",
        &code,
        "--yes",
        "--json",
        "-o",
        out.path().to_str().unwrap(),
    ]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let values = json_lines(&received.stdout);
    let names = events(&values);
    for expected in ["created", "route", "files", "file_verified", "completed"] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing from {names:?}"
        );
    }
    let verified = values
        .iter()
        .find(|v| v["event"] == "file_verified")
        .unwrap();
    let saved = PathBuf::from(verified["path"].as_str().unwrap());
    assert_eq!(saved, out.path().join("data.bin"));
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&path).unwrap()
    );

    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
    let status = sender.wait().unwrap();
    assert!(status.success());
    let sender_events = events(&json_lines(&rest));
    assert_eq!(
        sender_events.last().map(String::as_str),
        Some("completed"),
        "{sender_events:?}"
    );

    let listed = daemon.p2p(&["status"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(table.matches("completed").count(), 2, "{table}");
    assert_eq!(table.matches("direct (host ↔ ").count(), 2, "{table}");

    // An unknown code: one line, non-zero, and the advice to check it.
    let wrong = daemon.p2p(&["receive", "999999-orbit-lantern", "--yes"]);
    assert_one_line_error(&wrong, "no transfer is waiting for that code");

    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(!daemon.socket.exists(), "socket removed on SIGTERM");
}

#[test]
fn human_output_prints_code_and_saved_path() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "hello.txt", 1000, 12);
    let mut sender = Command::new(P2P)
        .args([
            "--socket",
            daemon.socket.to_str().unwrap(),
            "send",
            path.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(sender.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let code = line
        .trim()
        .strip_prefix("Code: ")
        .expect("first line gives the code")
        .to_owned();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        format!("On the other machine run: p2p receive {code}")
    );
    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let text = String::from_utf8_lossy(&received.stdout);
    assert!(
        text.contains(&format!(
            "Saved \"{}\"",
            daemon.downloads.join("hello.txt").display()
        )),
        "{text}"
    );
    assert!(sender.wait().unwrap().success());
}

#[test]
fn codes_never_reach_the_log_even_at_trace_level() {
    let daemon = DaemonProcess::start_with(&[], "trace");
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "quiet.bin", 70_000, 13);
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    assert!(sender.wait().unwrap().success());
    let log = daemon.log();
    assert!(
        log.len() > 10_000,
        "trace logging was on ({} bytes)",
        log.len()
    );
    let words: Vec<&str> = code.split('-').skip(1).collect();
    assert!(!log.contains(&code), "the code is in the log");
    for word in words {
        // Words can appear inside unrelated text; the code's words together must not.
        assert!(
            !log.contains(&format!("-{word}")),
            "code word {word} is in the log"
        );
    }
}

#[test]
fn a_job_outlives_its_cli_and_watch_reattaches() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "later.bin", 200_000, 14);
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let (job, code) = (
        created["job"].as_u64().unwrap(),
        created["code"].as_str().unwrap().to_owned(),
    );
    // The sending CLI goes away before anyone has received.
    sender.kill().unwrap();
    sender.wait().unwrap();
    let status = daemon.p2p(&["status", "--json"]);
    let listed = json_lines(&status.stdout);
    assert_eq!(listed[0]["state"], "waiting_for_peer", "{listed:?}");
    assert_eq!(listed[0]["code"], code.as_str());

    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let watched = daemon.p2p(&["watch", &job.to_string(), "--json"]);
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let names = events(&json_lines(&watched.stdout));
    assert_eq!(
        names.last().map(String::as_str),
        Some("completed"),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read(daemon.downloads.join("later.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );

    // Watching or cancelling a job that does not exist is a one-line error.
    assert_one_line_error(&daemon.p2p(&["watch", "999"]), "no job 999");
    assert_one_line_error(
        &daemon.p2p(&["cancel", &job.to_string()]),
        "already finished",
    );
}

#[test]
fn path_flags_force_relay_needs_turn_and_require_direct_accepts_a_direct_path() {
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "direct.bin", 50_000, 15);
    // No TURN server is configured: refused before any job exists.
    assert_one_line_error(
        &daemon.p2p(&["send", "--force-relay", path.to_str().unwrap()]),
        "--force-relay needs a TURN server",
    );
    assert!(daemon.p2p(&["status", "--json"]).stdout.is_empty());

    let (mut sender, _stdout, created) = spawn_json_send(
        &daemon.socket,
        &["--require-direct", "--json", path.to_str().unwrap()],
    );
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes", "--require-direct", "--json"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let values = json_lines(&received.stdout);
    let route = values
        .iter()
        .find(|v| v["event"] == "route")
        .expect("route event");
    assert_eq!(route["relayed"], false);
    assert!(sender.wait().unwrap().success());
    // The two flags contradict each other.
    let both = daemon.p2p(&[
        "send",
        "--force-relay",
        "--require-direct",
        path.to_str().unwrap(),
    ]);
    assert_eq!(both.status.code(), Some(2), "clap rejects the combination");
}

/// The defaults `p2pd --help` names are the ones the code has.
#[test]
fn daemon_help_states_the_defaults_in_the_code() {
    let help = Command::new(P2PD).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    const MIB: usize = 1024 * 1024;
    let phrases = [
        format!(
            "Seconds an unused code stays valid (default {})",
            p2pd::config::DEFAULT_CODE_TTL.as_secs()
        ),
        format!(
            "(default {} h)",
            p2pd::config::DEFAULT_RESUME_WINDOW.as_secs() / 3600
        ),
        format!(
            "(default {} MiB; 0 leaves",
            p2pd::rtc::runtime::UDP_SOCKET_BUFFER_BYTES / MIB
        ),
        format!(
            "starts with, in bytes (default {} MiB)",
            p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES as usize / MIB
        ),
        format!(
            "(default {} MiB; equal to",
            p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES as usize / MIB
        ),
        format!(
            "rto ({} ms RTO floor)",
            p2pd::rtc::sctp::RTO_MIN.as_millis()
        ),
        "bbr (rack with BBR-style pacing; the default)".to_owned(),
        format!(
            "for an offline device to come online (default {} h)",
            p2pd::config::DEFAULT_DEVICE_WAIT.as_secs() / 3600
        ),
    ];
    for phrase in phrases {
        assert!(
            flat.contains(&phrase),
            "p2pd --help should say {phrase:?}:\n{help}"
        );
    }
    // And p2p's, where it names the daemon's waits.
    let said = |args: &[&str]| {
        let help = Command::new(P2P).args(args).output().unwrap();
        String::from_utf8_lossy(&help.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let send = said(&["send", "--help"]);
    let phrase = format!(
        "the job waits for it ({} h unless p2pd's device_wait_secs",
        p2pd::config::DEFAULT_DEVICE_WAIT.as_secs() / 3600
    );
    assert!(
        send.contains(&phrase),
        "p2p send --help should say {phrase:?}"
    );
    let unpair = said(&["unpair", "--help"]);
    let phrase = format!(
        "(if it can be reached within {} s)",
        p2pd::daemon::mailbox::UNPAIR_NOTICE_LIMIT.as_secs()
    );
    assert!(
        unpair.contains(&phrase),
        "p2p unpair --help should say {phrase:?}"
    );
    assert_eq!(
        p2pd::rtc::sctp::SctpRecovery::default(),
        p2pd::rtc::sctp::SctpRecovery::Bbr
    );
    // The standalone rendezvous offers only flags it uses.
    let help = Command::new(P2PD)
        .args(["rendezvous", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.contains("--socket") && !help.contains("--download-dir"),
        "{help}"
    );
}

/// `--version` names the protocol; completions and manual pages come from the same clap
/// definitions as `--help`, for every shell clap_complete knows.
#[test]
fn version_completions_and_manual_pages() {
    let protocol = format!("(protocol {})", p2pd::rtc::peer::CHANNEL_LABEL);
    for binary in [P2P, P2PD] {
        let version = Command::new(binary).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.status.success() && text.contains(&protocol),
            "{text}"
        );
    }
    for (shell, marker) in [
        ("bash", "complete -F _p2p"),
        ("zsh", "#compdef p2p"),
        ("fish", "complete -c p2p"),
        ("elvish", "edit:completion:arg-completer[p2p]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = Command::new(P2P)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("detach"), "{shell}: flags missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    for binary in [P2P, P2PD] {
        let out = Command::new(binary).arg("man").arg(&man).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (page, needle) in [
        ("p2p.1", ".TH p2p 1"),
        ("p2p-send.1", "\\-\\-detach"),
        ("p2p-send.1", "Examples:"),
        ("p2p-receive.1", "\\-\\-stdout | tar x"),
        ("p2p-receive.1", "\\-\\-yes"),
        ("p2pd.1", "\\-\\-sctp\\-window\\-max\\-bytes"),
        ("p2pd-rendezvous.1", "\\-\\-turn\\-secret\\-file"),
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(needle), "{page}: no {needle:?}");
    }
}

/// The README's demo, as printed (without the `cargo install` in front, with the built
/// binaries on PATH): it verifies, and a second run does too and leaves nothing behind.
#[test]
fn the_readme_demo_runs_twice_and_leaves_nothing() {
    let readme = include_str!("../../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo install --locked --path . && bash -c"))
        .expect("the demo line");
    let script = line
        .strip_prefix("cargo install --locked --path . && ")
        .unwrap();
    let bin = Path::new(P2P).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cwd = tempfile::tempdir().unwrap();
    for run in 1..=2 {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(cwd.path())
            .env("PATH", &path)
            .env_remove("P2PD_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("identical"),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
        assert!(left.is_empty(), "run {run} left {left:?}");
    }
}

/// The events of docs/JSON.md, by name, with the fields each may carry.
fn documented_events() -> std::collections::BTreeMap<String, Vec<String>> {
    let doc = include_str!("../../docs/JSON.md");
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let fields_cell = rest.split('|').nth(1)?;
            let fields = fields_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            Some((name.to_owned(), fields))
        })
        .collect()
}

#[test]
fn json_events_follow_the_documented_schema_and_order() {
    let documented = documented_events();
    assert!(documented.contains_key("folder_saved"), "{documented:?}");
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("inner")).unwrap();
    random_file(&tree, "a.bin", 70_000, 51);
    random_file(&tree.join("inner"), "b.bin", 30_000, 52);
    let single = random_file(src.path(), "c.bin", 40_000, 53);
    let (sender, stdout, created) = spawn_json_send(
        &daemon.socket,
        &["--json", tree.to_str().unwrap(), single.to_str().unwrap()],
    );
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes", "--json"]);
    assert!(received.status.success());
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut { stdout }, &mut rest).unwrap();
    let mut sender = sender;
    assert!(sender.wait().unwrap().success());
    let sent = std::iter::once(created)
        .chain(json_lines(&rest))
        .collect::<Vec<_>>();
    for (side, values) in [("sender", sent), ("receiver", json_lines(&received.stdout))] {
        let names = events(&values);
        assert_eq!(names.first().map(String::as_str), Some("created"), "{side}");
        assert_eq!(
            names.last().map(String::as_str),
            Some("completed"),
            "{side}: {names:?}"
        );
        let final_state = values
            .iter()
            .position(|v| v["event"] == "state" && v["state"] == "completed")
            .unwrap_or_else(|| panic!("{side}: no final state in {names:?}"));
        assert!(
            values[final_state..]
                .iter()
                .all(|v| v["event"] == "state" || v["event"] == "completed"),
            "{side}: events after the final state: {names:?}"
        );
        for value in &values {
            let name = value["event"].as_str().unwrap();
            let fields = documented
                .get(name)
                .unwrap_or_else(|| panic!("{side}: {name} is not in docs/JSON.md"));
            assert!(value["job"].is_u64(), "{side}: {value}");
            for key in value.as_object().unwrap().keys() {
                assert!(
                    key == "event" || key == "job" || fields.contains(key),
                    "{side}: {name} carries {key:?}, which docs/JSON.md does not list"
                );
            }
        }
        if side == "receiver" {
            for expected in ["folder_saved", "file_verified", "files", "route"] {
                assert!(
                    names.contains(&expected.to_owned()),
                    "{expected}: {names:?}"
                );
            }
        }
    }
}

/// Job numbers go on across restarts, finished jobs are still listed after one, and
/// `p2p clear` forgets them (running jobs stay).
#[test]
fn job_numbers_and_history_survive_a_restart_and_clear_forgets_finished_jobs() {
    let mut daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "kept.bin", 20_000, 61);
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    let code = created["code"].as_str().unwrap().to_owned();
    assert!(daemon.p2p(&["receive", &code, "--yes"]).status.success());
    assert!(sender.wait().unwrap().success());
    let before: Vec<u64> = json_lines(&daemon.p2p(&["status", "--json"]).stdout)
        .iter()
        .map(|j| j["job"].as_u64().unwrap())
        .collect();
    assert_eq!(before, [1, 2]);

    daemon.restart();
    let listed = json_lines(&daemon.p2p(&["status", "--json"]).stdout);
    let after: Vec<(u64, String)> = listed
        .iter()
        .map(|j| {
            (
                j["job"].as_u64().unwrap(),
                j["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        after,
        [(1, "completed".to_owned()), (2, "completed".to_owned())]
    );
    let (mut waiting, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", path.to_str().unwrap()]);
    assert_eq!(created["job"], 3, "numbers go on: {created}");

    let cleared = daemon.p2p(&["clear"]);
    assert!(cleared.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cleared.stderr).trim(),
        "Forgot 2 finished jobs"
    );
    let left: Vec<u64> = json_lines(&daemon.p2p(&["status", "--json"]).stdout)
        .iter()
        .map(|j| j["job"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [3]);
    // Cleared stays cleared across a restart too.
    assert!(daemon.p2p(&["cancel", "3"]).status.success());
    let _ = waiting.wait();
    daemon.restart();
    assert!(daemon.p2p(&["clear"]).status.success());
    let listed = json_lines(&daemon.p2p(&["status", "--json"]).stdout);
    assert!(listed.is_empty(), "{listed:?}");
}

/// A rendezvous port someone else holds: one line naming the address, the way out and
/// the system's reason once.
#[test]
fn a_taken_rendezvous_port_is_one_line_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(P2PD)
        .args(["--socket", dir.path().join("s.sock").to_str().unwrap()])
        .args(["--download-dir", dir.path().to_str().unwrap()])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["--rendezvous-listen", &addr])
        .env("HOME", dir.path())
        .env_remove("P2PD_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(&addr) && line.contains("--rendezvous-listen"),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "said twice: {line}");
}

#[test]
fn a_sender_may_choose_the_code_words() {
    // A word not on the list is refused before the daemon is asked.
    let nowhere = Path::new("/nonexistent/p2pd.sock");
    assert_one_line_error(
        &p2p_with_socket(nowhere, &["send", "--code", "orbit-zzzz", "/etc/hostname"]),
        "not one of p2pd's code words",
    );
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), "chosen.bin", 5_000, 71);
    let (mut sender, _stdout, created) = spawn_json_send(
        &daemon.socket,
        &["--json", "--code", "orbit-lantern", path.to_str().unwrap()],
    );
    let code = created["code"].as_str().unwrap().to_owned();
    assert!(code.ends_with("-orbit-lantern"), "{code}");
    assert!(daemon.p2p(&["receive", &code, "--yes"]).status.success());
    assert!(sender.wait().unwrap().success());
}

/// `p2p send --text`: the receiver prints the message, line by line, with anything that
/// would drive its terminal escaped; nothing is written to disk.
#[test]
fn a_text_message_is_printed_not_saved() {
    let daemon = DaemonProcess::start();
    let message = "see you at 8\nbring the \u{1b}]0;PWNED\u{7}keys";
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", "--text", message]);
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes"]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let shown = String::from_utf8_lossy(&received.stdout);
    assert!(shown.contains("see you at 8\n"), "{shown}");
    assert!(shown.contains("bring the "), "{shown}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(
        std::fs::read_dir(&daemon.downloads)
            .unwrap()
            .next()
            .is_none()
    );
    assert!(sender.wait().unwrap().success());

    // JSON carries it whole; empty or files-and-text are one-line errors.
    let (mut sender, _stdout, created) =
        spawn_json_send(&daemon.socket, &["--json", "--text", "hello"]);
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes", "--json"]);
    let values = json_lines(&received.stdout);
    let text = values
        .iter()
        .find(|v| v["event"] == "text")
        .expect("a text event");
    assert_eq!(text["text"], "hello");
    assert_eq!(
        events(&values).last().map(String::as_str),
        Some("completed")
    );
    assert!(sender.wait().unwrap().success());
    assert_one_line_error(&daemon.p2p(&["send", "--text", " "]), "the text is empty");
    let long = "x".repeat(p2pd::transfer::wire::MAX_TEXT_BYTES + 1);
    assert_one_line_error(&daemon.p2p(&["send", "--text", &long]), "as a file");
}
