//! The control socket under abuse: each bad client is cut off, the others keep working.

use std::time::{Duration, Instant};

use p2pd::ipc::messages::{Request, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::*;

/// Waits until the daemon closes `stream` (read returns 0 or an error); returns how long it took.
async fn closed_within(stream: &mut UnixStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the daemon kept a bad client open for {limit:?}"
    );
    start.elapsed()
}

async fn still_serves(daemon: &TestDaemon) {
    let reply = daemon
        .client()
        .await
        .call(Request::List)
        .await
        .expect("list");
    assert!(matches!(reply, ServerFrame::Jobs(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_truncated_and_slow_clients_are_cut_off() {
    tokio::time::timeout(TEST_LIMIT, async {
        let daemon = TestDaemon::start().await;

        // Garbage where the hello should be.
        let mut garbage = UnixStream::connect(&daemon.socket).await.unwrap();
        garbage
            .write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
            .await
            .unwrap();
        closed_within(&mut garbage, Duration::from_secs(3)).await;

        // A length prefix far over the cap: refused before any allocation.
        let mut oversized = UnixStream::connect(&daemon.socket).await.unwrap();
        oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        closed_within(&mut oversized, Duration::from_secs(3)).await;

        // Silent after connecting, a frame cut short, and one byte a second: all in parallel.
        let mut silent = UnixStream::connect(&daemon.socket).await.unwrap();
        let mut truncated = UnixStream::connect(&daemon.socket).await.unwrap();
        truncated.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
        let mut slow = UnixStream::connect(&daemon.socket).await.unwrap();
        let dripping = tokio::spawn(async move {
            let start = Instant::now();
            for byte in [0u8, 0, 0, 50].into_iter().chain(std::iter::repeat(7)) {
                if slow.write_all(&[byte]).await.is_err() {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if start.elapsed() > Duration::from_secs(30) {
                    panic!("a one-byte-a-second client was kept for 30 s");
                }
            }
            unreachable!()
        });
        still_serves(&daemon).await;
        let silent_took = closed_within(&mut silent, Duration::from_secs(15)).await;
        let truncated_took = closed_within(&mut truncated, Duration::from_secs(15)).await;
        still_serves(&daemon).await;
        let slow_took = dripping.await.unwrap();
        assert!(
            silent_took <= Duration::from_secs(7),
            "silent client held {silent_took:?}"
        );
        assert!(
            truncated_took <= Duration::from_secs(12),
            "truncated frame held {truncated_took:?}"
        );
        assert!(
            slow_took <= Duration::from_secs(20),
            "slow client held {slow_took:?}"
        );
        still_serves(&daemon).await;
    })
    .await
    .expect("test finished in time");
}

#[test]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
fn another_users_client_is_refused() {
    // Needs root to become another user; CI runs as root.
    if unsafe { libc::geteuid() } != 0 {
        crate::netns_harness::skip("needs root to run the CLI as another user");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let daemon = runtime.block_on(TestDaemon::start());
    use std::os::unix::fs::PermissionsExt;
    // Open the file permissions so only SO_PEERCRED stands between nobody and the daemon.
    let run_dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut dir = run_dir.to_path_buf();
    while let Some(parent) = dir.parent() {
        if parent == std::env::temp_dir() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
            break;
        }
        dir = parent.to_path_buf();
    }
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_p2p"),
            "--socket",
        ])
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("belongs to another user"), "{stderr}");
    // The owner still gets in.
    runtime.block_on(still_serves(&daemon));
}
