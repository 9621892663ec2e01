//! Everything that must fail, and fail cleanly: wrong and expired codes, bad paths,
//! a second daemon, cancellation on either side, shutdown mid-transfer.

use std::time::Duration;

use p2pd::config::{DaemonConfig, RendezvousMode};
use p2pd::daemon::socket::SocketError;
use p2pd::daemon::{Daemon, DaemonError};
use p2pd::ipc::messages::{ErrorKind, JobState};
use p2pd::rtc::RtcSettings;

use crate::support::*;

fn other_words(code: &str) -> String {
    let nameplate = code.split('-').next().unwrap();
    let wrong = format!("{nameplate}-acid-acorn");
    if wrong == code {
        format!("{nameplate}-acorn-acid")
    } else {
        wrong
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_code_fails_both_sides_and_burns_the_nameplate() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "secret.txt", 100, 1);
        let (send_id, code) = a.send(&[path]).await.unwrap();
        let receive_id = b.receive(&other_words(&code)).await.unwrap();
        let received = b.wait(receive_id).await;
        let sent = a.wait(send_id).await;
        for info in [&received, &sent] {
            assert_eq!(info.state, JobState::Failed);
            let failure = info.failure.as_ref().unwrap();
            assert_eq!(failure.kind, ErrorKind::WrongCode);
            assert!(
                failure
                    .message
                    .contains("wrong code, or someone tried to guess it"),
                "{}",
                failure.message
            );
        }
        assert!(
            received.files.is_empty(),
            "nothing about the files reached the wrong receiver"
        );
        // The right code is useless now: the slot was burned.
        let retry = b.wait(b.receive(&code).await.unwrap()).await;
        assert_eq!(retry.failure.unwrap().kind, ErrorKind::UnknownCode);
        assert!(listing(&b.downloads).is_empty());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_code_fails_both_sides() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start_with(Options {
            code_ttl: Duration::from_secs(1),
            ..Options::default()
        })
        .await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "late.bin", 10, 1);
        let (send_id, code) = a.send(&[path]).await.unwrap();
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Failed);
        let failure = sent.failure.unwrap();
        assert_eq!(failure.kind, ErrorKind::Expired);
        assert!(failure.message.contains("expired"), "{}", failure.message);
        let received = a.wait(a.receive(&code).await.unwrap()).await;
        let failure = received.failure.unwrap();
        assert_eq!(failure.kind, ErrorKind::UnknownCode);
        assert!(
            failure.message.contains("ask the sender for a new one"),
            "{}",
            failure.message
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_create_no_job() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let src = tempfile::tempdir().unwrap();
        let good = random_file(src.path(), "good.bin", 10, 1);
        let missing = src.path().join("missing.bin");
        let (kind, message) = a.send(&[good.clone(), missing]).await.unwrap_err();
        assert_eq!(kind, ErrorKind::BadRequest);
        assert!(
            message.contains("missing.bin") && message.contains("no such file"),
            "{message}"
        );
        let fifo = src.path().join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let (kind, message) = a.send(std::slice::from_ref(&fifo)).await.unwrap_err();
        assert_eq!(kind, ErrorKind::BadRequest);
        assert!(
            message.contains("not a regular file or folder"),
            "{message}"
        );
        std::fs::remove_file(&fifo).unwrap();
        let (_, message) = a.send(&[]).await.unwrap_err();
        assert!(message.contains("nothing to send"), "{message}");
        let dup_dir = src.path().join("sub");
        std::fs::create_dir(&dup_dir).unwrap();
        let dup = random_file(&dup_dir, "good.bin", 1, 2);
        let (_, message) = a.send(&[good, dup]).await.unwrap_err();
        assert!(message.contains("are named \"good.bin\""), "{message}");
        let list = a
            .client()
            .await
            .call(p2pd::ipc::messages::Request::List)
            .await
            .unwrap();
        assert_eq!(
            list,
            p2pd::ipc::messages::ServerFrame::Jobs(vec![]),
            "no job was created"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_codes_and_missing_directories_are_refused() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let (kind, message) = a.receive("orbit-lantern").await.unwrap_err();
        assert_eq!(kind, ErrorKind::BadRequest);
        assert!(message.contains("must start with a number"), "{message}");
        let (_, message) = a.receive("4-orbit").await.unwrap_err();
        assert!(message.contains("needs 2"), "{message}");
        let (_, message) = a
            .receive_into(
                "4-orbit-lantern",
                Some(std::path::Path::new("/nonexistent/dir")),
            )
            .await
            .unwrap_err();
        assert!(message.contains("does not exist"), "{message}");
    })
    .await
    .expect("test finished in time");
}

fn config_for(socket: std::path::PathBuf, downloads: std::path::PathBuf) -> DaemonConfig {
    DaemonConfig {
        state_dir: socket.with_extension("state"),
        earlier_state_dirs: Vec::new(),
        socket,
        download_dir: downloads,
        rendezvous: RendezvousMode::Embedded {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        code_ttl: Duration::from_secs(60),
        resume_window: Duration::from_secs(3600),
        device_wait: Duration::from_secs(3600),
        rtc: RtcSettings {
            ice_servers: vec![],
            bind: vec!["127.0.0.1:0".into()],
            relay_only: false,
            udp_buffer_bytes: p2pd::rtc::runtime::UDP_SOCKET_BUFFER_BYTES,
            sctp_window_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES,
            sctp_window_max_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES,
            sctp_recovery: Default::default(),
            remote_candidates: Default::default(),
        },
        limits: Default::default(),
        path_policy: Default::default(),
        device_name: "test".into(),
        lan_discovery: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_the_same_socket_refuses_and_a_stale_socket_is_replaced() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut a = TestDaemon::start().await;
        let second = Daemon::start(config_for(a.socket.clone(), a.downloads.clone())).await;
        match second {
            Err(DaemonError::Socket(SocketError::InUse(path))) => assert_eq!(path, a.socket),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a second daemon started on a live socket"),
        }
        // The first daemon is unharmed.
        a.client().await;
        a.stop().await;
        assert!(!a.socket.exists(), "socket removed on stop");
        // A socket file left by a crashed daemon (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&a.socket).unwrap();
        drop(stale);
        assert!(a.socket.exists());
        let revived = Daemon::start(config_for(a.socket.clone(), a.downloads.clone()))
            .await
            .expect("replaces stale socket");
        p2pd::ipc::client::IpcClient::connect(&a.socket)
            .await
            .expect("new daemon answers");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(a.socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        revived.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// Starts a 256 MiB transfer and returns once the receiver has written some of it.
async fn transfer_in_flight(a: &TestDaemon, b: &TestDaemon, src: &std::path::Path) -> (u64, u64) {
    let path = random_file(src, "big.bin", 256 * 1024 * 1024, 5);
    let (send_id, code) = a.send(&[path]).await.unwrap();
    let receive_id = b.receive(&code).await.unwrap();
    let info = b.wait_until(receive_id, |i| i.bytes_done > 0).await;
    assert_eq!(info.state, JobState::Transferring, "{:?}", info.failure);
    (send_id, receive_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_cancel_mid_transfer_leaves_nothing() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let (send_id, receive_id) = transfer_in_flight(&a, &b, src.path()).await;
        b.cancel(receive_id).await;
        assert_eq!(b.wait(receive_id).await.state, JobState::Cancelled);
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Failed);
        assert_eq!(sent.failure.unwrap().kind, ErrorKind::PeerGone);
        assert!(
            listing(&b.downloads).is_empty(),
            "left: {:?}",
            listing(&b.downloads)
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_cancel_mid_transfer_leaves_nothing() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let (send_id, receive_id) = transfer_in_flight(&a, &b, src.path()).await;
        a.cancel(send_id).await;
        assert_eq!(a.wait(send_id).await.state, JobState::Cancelled);
        let received = b.wait(receive_id).await;
        assert_eq!(received.state, JobState::Failed);
        let failure = received.failure.unwrap();
        assert_eq!(failure.kind, ErrorKind::PeerGone);
        assert!(failure.message.contains("cancelled"), "{}", failure.message);
        assert!(
            listing(&b.downloads).is_empty(),
            "left: {:?}",
            listing(&b.downloads)
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_resumes_its_job_when_it_starts_again() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let mut b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let (send_id, _) = transfer_in_flight(&a, &b, src.path()).await;
        b.stop().await;
        assert!(!b.socket.exists());
        // The partial stays for the resume; nothing is under the final name.
        let left = listing(&b.downloads);
        assert!(
            left.len() == 1 && left[0].ends_with(".p2pd-part"),
            "left: {left:?}"
        );
        let waiting = a
            .wait_until(send_id, |i| i.state == JobState::WaitingToResume)
            .await;
        let resume = waiting.resume.expect("resume details");
        assert!(resume.deadline_unix > 0 && !resume.reason.is_empty());

        b.restart().await;
        let restored = b.jobs().await;
        assert_eq!(restored.len(), 1, "{restored:?}");
        let received = b.wait(restored[0].id).await;
        assert_eq!(
            received.state,
            JobState::Completed,
            "{:?}",
            received.failure
        );
        assert_eq!(a.wait(send_id).await.state, JobState::Completed);
        let saved = b.downloads.join("big.bin");
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            std::fs::read(src.path().join("big.bin")).unwrap()
        );
        assert_eq!(listing(&b.downloads), vec!["big.bin".to_owned()]);
    })
    .await
    .expect("test finished in time");
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
async fn disk_full_mid_transfer_fails_cleanly_on_both_sides() {
    let Some(disk) = Tmpfs::mount("8m") else {
        crate::netns_harness::skip("cannot mount a tmpfs here (needs root)");
    };
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "six.bin", 6 * 1024 * 1024, 21);
        let (send_id, code) = a.send(&[path]).await.unwrap();
        // The offer fits the free space when checked; then something else fills the disk.
        let id = b.receive_asking(&code, disk.dir.path()).await;
        let asked = b
            .wait_until(id, |i| i.state == JobState::AwaitingApproval)
            .await;
        assert_eq!(
            asked.state,
            JobState::AwaitingApproval,
            "{:?}",
            asked.failure
        );
        let filler = random_file(disk.dir.path(), "filler", 4 * 1024 * 1024, 22);
        let filler_hash = sha256_file(&filler);
        b.decide(id, true).await;

        let received = b.wait(id).await;
        assert_eq!(received.state, JobState::Failed);
        let failure = received.failure.unwrap();
        assert_eq!(failure.kind, ErrorKind::Io);
        assert!(failure.message.contains("disk full"), "{}", failure.message);
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Failed);
        assert!(
            sent.failure.unwrap().message.contains("disk full"),
            "the sender hears why"
        );
        assert_eq!(
            listing(disk.dir.path()),
            vec!["filler".to_owned()],
            "no partial, no final file"
        );
        assert_eq!(sha256_file(&filler), filler_hash);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_changed_during_an_interruption_fails_instead_of_mixing() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let mut b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let (send_id, _) = transfer_in_flight(&a, &b, src.path()).await;
        b.stop().await;
        // Same size, different bytes at the start: only the content check can tell.
        let path = src.path().join("big.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        b.restart().await;
        let restored = b.jobs().await;
        let received = b.wait(restored[0].id).await;
        assert_eq!(received.state, JobState::Failed);
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Failed);
        let message = sent.failure.unwrap().message;
        assert!(
            message.contains("changed while it was being sent"),
            "{message}"
        );
        assert!(
            listing(&b.downloads).is_empty(),
            "left: {:?}",
            listing(&b.downloads)
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_interrupted_job_ends_it_on_both_sides() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let mut b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let (send_id, _) = transfer_in_flight(&a, &b, src.path()).await;
        b.stop().await;
        a.wait_until(send_id, |i| i.state == JobState::WaitingToResume)
            .await;
        b.restart().await;
        // At once: the restored job is still finding its peer.
        let restored = b.jobs().await[0].id;
        b.cancel(restored).await;
        assert_eq!(b.wait(restored).await.state, JobState::Cancelled);
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Failed, "{:?}", sent.failure);
        let message = sent.failure.unwrap().message;
        assert!(message.contains("cancelled"), "{message}");
        assert!(
            listing(&b.downloads).is_empty(),
            "left: {:?}",
            listing(&b.downloads)
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_peer_never_returns_fails_when_its_resume_window_closes() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start_with(Options {
            resume_window: Duration::from_secs(3),
            ..Options::default()
        })
        .await;
        let mut b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let (send_id, _) = transfer_in_flight(&a, &b, src.path()).await;
        b.stop().await;
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Failed);
        let message = sent.failure.unwrap().message;
        assert!(
            message.contains("did not come back within the resume window (3 s)"),
            "{message}"
        );
    })
    .await
    .expect("test finished in time");
}

/// Two offers that each fit a small disk but not together: the second is refused before
/// anyone is asked, saying the space is promised to the first; once the first is
/// received, an offer that fits what is left goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with `cargo test -- --include-ignored` as root, as CI does"]
async fn two_receives_that_fit_alone_but_not_together_refuse_the_second_before_asking() {
    let Some(disk) = Tmpfs::mount("8m") else {
        crate::netns_harness::skip("cannot mount a tmpfs here (needs root)");
    };
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let first = random_file(src.path(), "first.bin", 5 * 1024 * 1024, 23);
        let second = random_file(src.path(), "second.bin", 5 * 1024 * 1024, 24);
        let (first_send, first_code) = a.send(&[first]).await.unwrap();
        let one = b.receive_asking(&first_code, disk.dir.path()).await;
        b.wait_until(one, |i| i.state == JobState::AwaitingApproval)
            .await;
        let (second_send, second_code) = a.send(&[second]).await.unwrap();
        let two = b.receive_asking(&second_code, disk.dir.path()).await;
        let refused = b.wait(two).await;
        assert_eq!(refused.state, JobState::Failed, "never asked: {refused:?}");
        let message = refused.failure.unwrap().message;
        assert!(
            message.contains("not enough free space") && message.contains("transfers in progress"),
            "{message}"
        );
        assert_eq!(a.wait(second_send).await.state, JobState::Failed);
        b.decide(one, true).await;
        assert_eq!(b.wait(one).await.state, JobState::Completed);
        assert_eq!(a.wait(first_send).await.state, JobState::Completed);
        assert_eq!(listing(disk.dir.path()), vec!["first.bin".to_owned()]);
    })
    .await
    .expect("test finished in time");
}
