//! A `redis-server` of a test's own (Debian's, which CI installs): no persistence,
//! loopback or a Unix socket only, `kill -9`ed on drop. Without one the test fails (as CI
//! installs it), it does not pass by skipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

pub(crate) struct Redis {
    child: Option<Child>,
    /// Where it listens: a TCP port on 127.0.0.1, or a Unix socket.
    at: Listening,
    _dir: tempfile::TempDir,
}

enum Listening {
    Port(u16),
    Socket(PathBuf),
    /// TLS only, on this port of 127.0.0.1, its certificate for "localhost".
    Tls(u16),
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    pub(crate) fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let redis = Redis::spawn(&args, Listening::Port(port), dir);
        redis.wait_until(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        redis
    }

    /// Listening on a Unix socket only (`redis+unix://`).
    pub(crate) fn start_unix() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let args = [
            "--port".to_owned(),
            "0".to_owned(),
            "--unixsocket".to_owned(),
            socket.display().to_string(),
            "--unixsocketperm".to_owned(),
            "700".to_owned(),
        ];
        let redis = Redis::spawn(&args, Listening::Socket(socket.clone()), dir);
        redis.wait_until(|| std::os::unix::net::UnixStream::connect(&socket).is_ok());
        redis
    }

    /// TLS only (`rediss://localhost:PORT`), with this certificate and key (PEM files).
    pub(crate) fn start_tls(cert: &Path, key: &Path) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "--port".to_owned(),
            "0".to_owned(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-key-file".to_owned(),
            key.display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let redis = Redis::spawn(&args, Listening::Tls(port), dir);
        redis.wait_until(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        redis
    }

    fn spawn(args: &[String], at: Listening, dir: tempfile::TempDir) -> Redis {
        if !Path::new(REDIS_SERVER).exists() {
            crate::netns_harness::skip("needs redis-server (Debian: apt-get install redis-server)");
        }
        let child = Command::new(REDIS_SERVER)
            .args(args)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        Redis {
            child: Some(child),
            at,
            _dir: dir,
        }
    }

    fn wait_until(&self, listening: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its TCP port (a Redis on a Unix socket has none).
    pub(crate) fn port(&self) -> u16 {
        match self.at {
            Listening::Port(port) | Listening::Tls(port) => port,
            Listening::Socket(_) => panic!("this Redis listens on a Unix socket"),
        }
    }

    pub(crate) fn url(&self) -> String {
        match &self.at {
            Listening::Port(port) => format!("redis://127.0.0.1:{port}"),
            Listening::Socket(path) => format!("redis+unix://{}", path.display()),
            Listening::Tls(port) => format!("rediss://localhost:{port}"),
        }
    }

    /// `kill -9`, as a crash or a lost machine would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
