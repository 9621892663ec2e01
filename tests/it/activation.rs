//! Socket activation (issue #25): systemd's p2pd.socket starts the daemon on the first
//! `p2p` call and passes it the listening socket (LISTEN_FDS); played here by
//! `systemd-socket-activate`, which does the same without a running systemd.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli::{P2P, P2PD};

#[test]
fn the_first_p2p_call_starts_the_daemon_on_the_socket_systemd_passed() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        crate::netns_harness::skip("needs systemd-socket-activate (Debian's systemd)");
    }
    let home = tempfile::tempdir().unwrap();
    let run = home.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::create_dir(home.path().join("dl")).unwrap();
    let socket = run.join("p2pd.sock");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&socket)
        .args(["-E", "RUST_LOG=info"])
        .arg("-E")
        .arg(format!("HOME={}", home.path().display()))
        .arg(P2PD)
        .arg("--socket")
        .arg(&socket)
        .arg("--download-dir")
        .arg(home.path().join("dl"))
        .args([
            "--rendezvous-listen",
            "127.0.0.1:0",
            "--ice-bind",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.path().join("p2pd.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no socket made");
        std::thread::sleep(Duration::from_millis(20));
    }
    // No daemon runs yet: this call starts it, and is answered by it.
    let status = Command::new(P2P)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .env_remove("P2PD_SOCKET")
        .output()
        .unwrap();
    let log = std::fs::read_to_string(home.path().join("p2pd.log")).unwrap_or_default();
    assert!(
        status.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        log.contains("listening on the control socket systemd passed"),
        "{log}"
    );
    // SAFETY: signalling our own child (now p2pd itself).
    unsafe { libc::kill(activator.id() as i32, libc::SIGTERM) };
    assert!(activator.wait().unwrap().success());
    assert!(
        socket.exists(),
        "the socket is systemd's: it stays for the next start"
    );
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_and_stopping() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("dl")).unwrap();
    let notify = home.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = Command::new(P2PD)
        .arg("--socket")
        .arg(home.path().join("p2pd.sock"))
        .arg("--download-dir")
        .arg(home.path().join("dl"))
        .args([
            "--rendezvous-listen",
            "127.0.0.1:0",
            "--ice-bind",
            "127.0.0.1:0",
        ])
        .env("HOME", home.path())
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 20 s");
    said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let n = listener.recv(&mut buf).expect("STOPPING=1");
    said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(daemon.wait().unwrap().success());
    assert!(said[0].contains("READY=1"), "{said:?}");
    assert!(said[1].contains("STOPPING=1"), "{said:?}");
}

#[test]
fn the_rendezvous_serves_on_the_socket_systemd_passed() {
    // p2pd-rendezvous.socket: systemd listens (port 443 needs no capability then), the
    // first connection starts the rendezvous, which serves on the passed socket and
    // ignores its own `--listen`.
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        crate::netns_harness::skip("needs systemd-socket-activate (Debian's systemd)");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut activator = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-E", "RUST_LOG=info"])
        .arg(P2PD)
        .args(["rendezvous", "--listen", "127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("rendezvous.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let asked = (|| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            Some(answer)
        })();
        match asked {
            Some(answer) if !answer.is_empty() => break answer,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break String::new(),
        }
    };
    let _ = activator.kill();
    let _ = activator.wait();
    let log = std::fs::read_to_string(dir.path().join("rendezvous.log")).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{log}");
    assert!(log.contains("the socket systemd passed"), "{log}");
}
