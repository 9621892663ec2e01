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

pub(crate) fn p2p_with_socket(socket: &Path, args: &[&str]) -> Output {
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

pub(crate) fn events(values: &[serde_json::Value]) -> Vec<String> {
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
