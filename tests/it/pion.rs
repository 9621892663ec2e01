//! Interop with a third implementation: `tests/pion/peer`, written in Go on Debian's
//! pion/webrtc v3 from docs/PROTOCOL.md, signaled by hand as pion's examples are. Real
//! daemons, the real `p2p`, and this test carrying the descriptions between them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::cli::{DaemonProcess, P2P};
use crate::manual::{Terminal, sas_of};
use crate::netns_harness::skip;
use crate::support::{random_file, sha256_file};

const PION: &str = "/usr/share/gocode/src/github.com/pion/webrtc";

/// Builds the Go peer once per test run, offline, from Debian's packages.
fn peer() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let go = Command::new("go").arg("version").output();
        if !matches!(go, Ok(ref out) if out.status.success()) || !Path::new(PION).is_dir() {
            skip(
                "needs Go and pion/webrtc v3 (Debian: golang-go, golang-github-pion-webrtc.v3-dev)",
            );
        }
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pion");
        // Debian installs pion/webrtc v3 without its /v3 import path: a GOPATH of our own
        // supplies it as a link, the rest comes from /usr/share/gocode.
        let link = work.join("gopath/src/github.com/pion/webrtc/v3");
        std::fs::create_dir_all(link.parent().unwrap()).expect("GOPATH");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(PION, &link).expect("link pion/webrtc as v3");
        }
        let binary = work.join("peer");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pion/peer");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(&source)
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("{}:/usr/share/gocode", work.join("gopath").display()),
            )
            .env("GOCACHE", work.join("cache"))
            .env_remove("GOFLAGS")
            .output()
            .expect("run go build");
        assert!(
            built.status.success(),
            "the pion peer does not build: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        binary
    })
}

#[test]
#[ignore = "needs Go and pion/webrtc v3 from Debian (CI installs them and runs --include-ignored)"]
fn p2pd_sends_a_file_to_a_pion_peer() {
    let peer = peer().to_str().unwrap().to_owned();
    let a = DaemonProcess::start();
    // Not a multiple of either side's message size.
    let source = random_file(a.dir.path(), "to-pion.bin", 5 * 1024 * 1024 + 333, 7);
    let into = tempfile::tempdir().unwrap();
    let socket = a.socket.to_str().unwrap().to_owned();
    let mut sender = Terminal::spawn(
        P2P,
        &[
            "--socket",
            &socket,
            "send",
            "--manual",
            source.to_str().unwrap(),
        ],
    );
    let offer = sender.line();
    let mut pion = Terminal::spawn(
        &peer,
        &["-loopback", "receive", into.path().to_str().unwrap()],
    );
    pion.type_line(&offer);
    let answer = pion.line();
    sender.type_line(&answer);
    sender.type_line("y");
    let (received, pion_err) = pion.finish();
    let (sent, sender_err) = sender.finish();
    assert!(received, "pion peer failed: {pion_err}");
    assert!(sent, "p2p send failed: {sender_err}");
    assert_eq!(sas_of(&sender_err), sas_of(&pion_err));
    assert_eq!(
        sha256_file(&into.path().join("to-pion.bin")),
        sha256_file(&source)
    );
}

#[test]
#[ignore = "needs Go and pion/webrtc v3 from Debian (CI installs them and runs --include-ignored)"]
fn a_pion_peer_sends_a_file_to_p2pd() {
    let peer = peer().to_str().unwrap().to_owned();
    let b = DaemonProcess::start();
    let from = tempfile::tempdir().unwrap();
    let source = random_file(from.path(), "from-pion.bin", 5 * 1024 * 1024 + 333, 8);
    let mut pion = Terminal::spawn(&peer, &["-loopback", "send", source.to_str().unwrap()]);
    let offer = pion.line();
    let socket = b.socket.to_str().unwrap().to_owned();
    let out = b.downloads.to_str().unwrap().to_owned();
    let mut receiver = Terminal::spawn(
        P2P,
        &[
            "--socket", &socket, "receive", "--manual", "--yes", "-o", &out,
        ],
    );
    receiver.type_line(&offer);
    let answer = receiver.line();
    pion.type_line(&answer);
    let (received, receiver_err) = receiver.finish();
    let (sent, pion_err) = pion.finish();
    assert!(received, "p2p receive failed: {receiver_err}");
    assert!(sent, "pion peer failed: {pion_err}");
    assert_eq!(sas_of(&receiver_err), sas_of(&pion_err));
    assert_eq!(
        sha256_file(&b.downloads.join("from-pion.bin")),
        sha256_file(&source)
    );
}
