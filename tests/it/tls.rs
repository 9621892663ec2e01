//! A `wss://` rendezvous: a real transfer through it with a private CA made in the test,
//! the one-line error of a daemon that does not trust it, and a certificate swapped by
//! SIGHUP in the real `p2pd rendezvous`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pd::ipc::messages::JobState;
use p2pd::rendezvous::client::RendezvousClient;
use p2pd::rendezvous::server::{self, RendezvousConfig};
use p2pd::rendezvous::tls::ServerTls;
use p2pd::rendezvous::{Endpoint, SignalError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::support::*;

const P2PD: &str = env!("CARGO_BIN_EXE_p2pd");

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// Writes this CA's certificate to `dir/NAME-ca.pem`.
    fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// Issues a certificate for 127.0.0.1 and writes it and its key to `cert` and `key`.
    fn issue(&self, cert: &Path, key: &Path) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key_pair = KeyPair::generate().unwrap();
        let issued = params.signed_by(&key_pair, &self.issuer).unwrap();
        std::fs::write(cert, issued.pem()).unwrap();
        std::fs::write(key, key_pair.serialize_pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_completes_through_a_tls_rendezvous_trusted_by_a_private_ca() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("p2pd test CA");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        ca.issue(&cert, &key);
        let ca_file = ca.write_ca(dir.path(), "ours");
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("wss://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let config = RendezvousConfig {
            tls: Some(Arc::new(ServerTls::load(&cert, &key).unwrap())),
            ..Default::default()
        };
        tokio::spawn(server::serve(listener, config, stop));
        let trusting = |ca: PathBuf| Options {
            rendezvous: Some(url.clone()),
            rendezvous_ca: Some(ca),
            ..Default::default()
        };

        let a = TestDaemon::start_with(trusting(ca_file.clone())).await;
        let b = TestDaemon::start_with(trusting(ca_file.clone())).await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "over-tls.bin", 256 * 1024, 9);
        let (send_id, code) = a.send(std::slice::from_ref(&path)).await.unwrap();
        let received = b.wait(b.receive(&code).await.unwrap()).await;
        assert_eq!(
            received.state,
            JobState::Completed,
            "{:?}",
            received.failure
        );
        assert_eq!(a.wait(send_id).await.state, JobState::Completed);
        assert_eq!(
            sha256_file(&b.downloads.join("over-tls.bin")),
            sha256_file(&path)
        );

        // The same address serves the browser page, over HTTPS.
        let page = https_get(listener_addr(&url), &ca_file, "/").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("<title>p2pd"), "{page}");
        assert!(
            page.contains("Strict-Transport-Security: max-age="),
            "{page}"
        );

        // An address the certificate does not name is told as such, not as distrust.
        let port = listener_addr(&url).port();
        let misnamed =
            connect_trusting(&format!("wss://localhost:{port}"), &ca_file, Duration::ZERO).await;
        assert!(
            matches!(misnamed, Err(SignalError::WrongName { .. })),
            "{misnamed:?}"
        );
        let message = misnamed.unwrap_err().to_string();
        assert!(
            message.contains("another name") && !message.contains("--rendezvous-ca"),
            "{message}"
        );

        // A daemon that trusts another CA is refused, and told what to do in one line.
        let other = TestCa::new("someone else").write_ca(dir.path(), "other");
        let c = TestDaemon::start_with(trusting(other)).await;
        let (_, message) = c.send(std::slice::from_ref(&path)).await.unwrap_err();
        assert!(
            message.contains("does not trust") && message.contains("--rendezvous-ca"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        // So is a client that trusts only the system's roots.
        let plain = RendezvousClient::connect(url.as_str()).await;
        assert!(
            matches!(plain, Err(SignalError::Untrusted { .. })),
            "{:?}",
            plain.err()
        );
    })
    .await
    .expect("test finished in time");
}

/// Connects with `ca` until it works or `within` passes; the last error otherwise.
async fn connect_trusting(url: &str, ca: &Path, within: Duration) -> Result<(), SignalError> {
    let endpoint = Endpoint::new(url, Some(ca)).unwrap();
    let until = Instant::now() + within;
    loop {
        match RendezvousClient::connect(&endpoint).await {
            Ok(client) => {
                client.close().await;
                return Ok(());
            }
            Err(error) if Instant::now() > until => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_rendezvous_serve_its_renewed_certificate() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        old_ca.issue(&cert, &key);
        let (old_file, new_file) = (
            old_ca.write_ca(dir.path(), "old"),
            new_ca.write_ca(dir.path(), "new"),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = tokio::process::Command::new(P2PD)
            .args(["rendezvous", "--listen", &listen])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("wss://{listen}");
        connect_trusting(&url, &old_file, Duration::from_secs(20))
            .await
            .expect("the rendezvous serves the first certificate");

        new_ca.issue(&cert, &key);
        let pid = child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child this test spawned and still holds.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        connect_trusting(&url, &new_file, Duration::from_secs(10))
            .await
            .expect("new connections see the renewed certificate");
        let stale = connect_trusting(&url, &old_file, Duration::ZERO).await;
        assert!(
            matches!(stale, Err(SignalError::Untrusted { .. })),
            "{stale:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP did not stop the rendezvous"
        );
        child.kill().await.unwrap();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_a_rendezvous_without_tls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = tokio::process::Command::new(P2PD)
            .args(["rendezvous", "--listen", &listen])
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("ws://{listen}");
        let until = Instant::now() + Duration::from_secs(20);
        while RendezvousClient::connect(url.as_str()).await.is_err() {
            assert!(Instant::now() < until, "the rendezvous never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pid = child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child this test spawned and still holds.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped it");
        RendezvousClient::connect(url.as_str())
            .await
            .expect("still serving after SIGHUP")
            .close()
            .await;
        child.kill().await.unwrap();
    })
    .await
    .expect("test finished in time");
}

fn listener_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("wss://")
        .parse()
        .expect("an address")
}

/// One HTTPS request, trusting only `ca`; the whole response.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the rendezvous");
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}
