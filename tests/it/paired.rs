//! Sends between paired devices without a code, through real daemons and the real
//! rendezvous: each device's rule and caps, an offline device, a copied pairing without
//! the identity key, and unpairing.

use std::time::Duration;

use p2pd::ipc::messages::{Direction, ErrorKind, JobState, JobSummary, Request, Rule, ServerFrame};

use crate::devices::{devices, pair};
use crate::support::{Options, TestDaemon, random_file, sha256_file};

pub(crate) async fn set_rule(daemon: &TestDaemon, name: &str, rule: Rule, max_files: Option<u64>) {
    let reply = daemon
        .client()
        .await
        .call(Request::Rule {
            name: name.into(),
            rule,
            max_files,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(reply, ServerFrame::Devices(ref d) if d.len() == 1 && d[0].rule == rule),
        "{reply:?}"
    );
}

/// What `p2p devices` says of each paired device being online.
async fn online(daemon: &TestDaemon) -> Vec<Option<bool>> {
    match daemon.client().await.call(Request::Devices).await.unwrap() {
        ServerFrame::Devices(list) => list.into_iter().map(|d| d.online).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// The offer from a paired device that waits for this daemon's person.
async fn waiting_offer(daemon: &TestDaemon) -> JobSummary {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found =
            daemon.jobs().await.into_iter().find(|j| {
                j.direction == Direction::Receive && j.state == JobState::AwaitingApproval
            });
        if let Some(job) = found {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no offer in the inbox within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_device_sends_without_a_code_and_auto_saves_under_from_name() {
    let a = TestDaemon::start().await;
    let mut b = a.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "test", Rule::Auto, None).await;
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "report.bin", 3 << 20, 1);
    let job = a
        .send_to("peer", std::slice::from_ref(&file))
        .await
        .unwrap();
    let info = a.wait(job).await;
    assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
    assert_eq!(info.device.as_deref(), Some("peer"));
    let saved = b.downloads.join("From test").join("report.bin");
    assert_eq!(sha256_file(&saved), sha256_file(&file));
    let received = b.jobs().await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].device.as_deref(), Some("test"));
    assert_eq!(received[0].state, JobState::Completed);

    // Both identities and the pairing survive a restart of the receiver.
    b.restart().await;
    let second = random_file(src.path(), "second.bin", 100_000, 2);
    let job = a
        .send_to("peer", std::slice::from_ref(&second))
        .await
        .unwrap();
    assert_eq!(a.wait(job).await.state, JobState::Completed);
    let saved = b.downloads.join("From test").join("second.bin");
    assert_eq!(sha256_file(&saved), sha256_file(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_rule_waits_in_the_inbox_and_a_no_or_a_cap_is_told_to_the_sender() {
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    pair(&a, &b).await;
    let src = tempfile::tempdir().unwrap();
    let one = random_file(src.path(), "one.bin", 200_000, 3);
    let two = random_file(src.path(), "two.bin", 1000, 4);

    // Ask (the default): the offer waits, then a yes takes it.
    let job = a.send_to("peer", std::slice::from_ref(&one)).await.unwrap();
    let offer = waiting_offer(&b).await;
    assert_eq!((offer.device.as_deref(), offer.files), (Some("test"), 1));
    b.decide(offer.id, true).await;
    assert_eq!(a.wait(job).await.state, JobState::Completed);
    assert!(b.downloads.join("From test").join("one.bin").is_file());

    // A no: the sender hears it.
    let job = a.send_to("peer", std::slice::from_ref(&two)).await.unwrap();
    let offer = waiting_offer(&b).await;
    b.decide(offer.id, false).await;
    let failure = a.wait(job).await.failure.expect("declined");
    assert_eq!(failure.kind, ErrorKind::Declined, "{failure:?}");
    assert!(!b.downloads.join("From test").join("two.bin").exists());

    // Past the device's cap: refused before anyone is asked, with the reason.
    set_rule(&b, "test", Rule::Ask, Some(1)).await;
    let job = a.send_to("peer", &[one, two]).await.unwrap();
    let failure = a.wait(job).await.failure.expect("refused");
    assert_eq!(failure.kind, ErrorKind::Declined, "{failure:?}");
    assert!(
        failure
            .message
            .contains("2 files, more than this receiver's limit of 1"),
        "{}",
        failure.message
    );
    assert!(
        b.jobs()
            .await
            .iter()
            .all(|j| j.state != JobState::AwaitingApproval)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_an_offline_device_waits_for_it_within_its_window() {
    let a = TestDaemon::start().await;
    let mut b = a.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "test", Rule::Auto, None).await;
    assert_eq!(online(&a).await, [Some(true)]);
    b.stop().await;
    assert_eq!(
        online(&a).await,
        [Some(false)],
        "a stopped device is offline"
    );
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "later.bin", 500_000, 5);
    let job = a
        .send_to("peer", std::slice::from_ref(&file))
        .await
        .unwrap();
    let waiting = a
        .wait_until(job, |i| i.state == JobState::WaitingForPeer)
        .await;
    let deadline = waiting.wait_deadline_unix.expect("the time it waits until");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 3590..=now + 3600).contains(&deadline),
        "{deadline} vs {now}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.jobs().await[0].state, JobState::WaitingForPeer);
    // The device comes online: the file arrives without anyone doing anything.
    b.restart().await;
    let info = a.wait(job).await;
    assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
    assert_eq!(info.wait_deadline_unix, None);
    let saved = b.downloads.join("From test").join("later.bin");
    assert_eq!(sha256_file(&saved), sha256_file(&file));

    // A device that stays away past the window: the send ends, saying so.
    let c = TestDaemon::start_with(Options {
        device_wait: Duration::from_secs(3),
        ..Options::default()
    })
    .await;
    let mut d = c.peer().await;
    pair(&c, &d).await;
    d.stop().await;
    let job = c.send_to("peer", &[file]).await.unwrap();
    let failure = c.wait(job).await.failure.expect("gave up");
    assert_eq!(failure.kind, ErrorKind::PeerGone);
    assert_eq!(
        failure.message,
        "peer did not come online within 3 s: send again when it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_pairing_without_the_identity_key_is_refused_and_unpairing_ends_sends() {
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "test", Rule::Auto, None).await;
    // A third daemon with a's name and a's whole devices.json (the pair secret too), but
    // its own identity key.
    let mut c = a
        .peer_with(Options {
            device_name: "test",
            ..Options::default()
        })
        .await;
    c.stop().await;
    std::fs::copy(
        a.state_dir().join("devices.json"),
        c.state_dir().join("devices.json"),
    )
    .unwrap();
    c.restart().await;
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "stolen.bin", 1000, 6);
    let job = c
        .send_to("peer", std::slice::from_ref(&file))
        .await
        .unwrap();
    let failure = c.wait(job).await.failure.expect("refused");
    assert_eq!(failure.kind, ErrorKind::Declined, "{failure:?}");
    assert!(
        failure.message.contains("peer refused this device"),
        "{}",
        failure.message
    );
    assert!(
        b.jobs().await.is_empty(),
        "the refused send never reached the receiver's person"
    );
    assert!(!b.downloads.join("From test").exists());

    // Unpairing tells the other side; after it, neither side can send to the other.
    let reply = b
        .client()
        .await
        .call(Request::Unpair {
            name: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply, ServerFrame::Unpaired { told: true });
    assert!(devices(&a).await.is_empty());
    let refused = a.send_to("peer", &[file]).await.unwrap_err();
    assert_eq!(refused.0, ErrorKind::NotFound, "{refused:?}");
    assert_eq!(
        refused.1,
        "no paired device is called peer: p2p devices lists them, p2p pair adds one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_between_paired_devices_resumes_after_the_receiver_restarts() {
    let a = TestDaemon::start().await;
    let mut b = a.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "test", Rule::Auto, None).await;
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "big.bin", 96 << 20, 7);
    let job = a
        .send_to("peer", std::slice::from_ref(&file))
        .await
        .unwrap();
    a.wait_until(job, |i| i.bytes_done > 4 << 20).await;
    // Stopped mid-transfer: the job is durable on both sides, and resumes on its own
    // channel (not the mailbox) once the receiver is back.
    b.stop().await;
    let interrupted = a
        .wait_until(job, |i| i.state == JobState::WaitingToResume)
        .await;
    assert_eq!(interrupted.state, JobState::WaitingToResume);
    assert!(interrupted.bytes_done < interrupted.bytes_total);
    b.restart().await;
    let info = a.wait(job).await;
    assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
    let saved = b.downloads.join("From test").join("big.bin");
    assert_eq!(sha256_file(&saved), sha256_file(&file));
    crate::support::assert_no_partials(&b.downloads.join("From test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_a_device_outlives_a_restart_of_its_own_daemon() {
    // A third daemon hosts the rendezvous, so both others can restart.
    let hub = TestDaemon::start().await;
    let mut a = hub
        .peer_with(Options {
            device_name: "sender",
            ..Options::default()
        })
        .await;
    let mut b = hub.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "sender", Rule::Auto, None).await;
    b.stop().await;
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "kept.bin", 300_000, 8);
    let job = a
        .send_to("peer", std::slice::from_ref(&file))
        .await
        .unwrap();
    let waiting = a
        .wait_until(job, |i| i.state == JobState::WaitingForPeer)
        .await;
    a.restart().await;
    let restored = a.jobs().await;
    assert_eq!(restored.len(), 1);
    assert_eq!(
        (
            restored[0].id,
            restored[0].state,
            restored[0].wait_deadline_unix
        ),
        (job, JobState::WaitingForPeer, waiting.wait_deadline_unix),
        "the same job, still waiting, with the same deadline"
    );
    b.restart().await;
    let info = a.wait(job).await;
    assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
    let saved = b.downloads.join("From sender").join("kept.bin");
    assert_eq!(sha256_file(&saved), sha256_file(&file));
    let left: Vec<_> = std::fs::read_dir(a.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("outbox-"))
        .collect();
    assert!(
        left.is_empty(),
        "the waiting send's record is gone once it was met"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpairing_a_device_ends_the_sends_waiting_for_it() {
    let a = TestDaemon::start().await;
    let mut b = a.peer().await;
    pair(&a, &b).await;
    b.stop().await;
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "never.bin", 1000, 9);
    let job = a
        .send_to("peer", std::slice::from_ref(&file))
        .await
        .unwrap();
    a.wait_until(job, |i| i.state == JobState::WaitingForPeer)
        .await;
    let reply = a
        .client()
        .await
        .call(Request::Unpair {
            name: "peer".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerFrame::Unpaired { told: false },
        "the device is offline"
    );
    let failure = a.wait(job).await.failure.expect("ended");
    assert_eq!(failure.kind, ErrorKind::NotFound, "{failure:?}");
    assert_eq!(
        failure.message,
        "peer was unpaired, or paired again, while this send waited: nothing was sent"
    );
    let left = std::fs::read_dir(a.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("outbox-"))
        .count();
    assert_eq!(left, 0);
}

/// Sends `text` to the paired device `to`, as `p2p send --text … --to` does.
async fn text_to(daemon: &TestDaemon, to: &str, text: &str) -> u64 {
    let reply = daemon
        .client()
        .await
        .call(Request::Send {
            paths: Vec::new(),
            follow: false,
            path: Default::default(),
            words: None,
            text: Some(text.to_owned()),
            manual: false,
            to: Some(p2pd::ipc::messages::Recipient::Paired(to.to_owned())),
        })
        .await
        .unwrap();
    match reply {
        ServerFrame::Created(info) => info.id,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_device_whose_rule_is_ask_waits_in_the_inbox_unread() {
    // Issue #23: a paired device's text used to be shown at once, whatever its rule.
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    pair(&a, &b).await;
    let declined = text_to(&a, "peer", "first words").await;
    let waiting = waiting_offer(&b).await;
    assert!(waiting.message_offered, "{waiting:?}");
    assert_eq!(waiting.text, None, "nothing shown before a yes");
    b.decide(waiting.id, false).await;
    assert_eq!(
        b.wait(waiting.id).await.text,
        None,
        "a declined message is never shown"
    );
    let sent = a.wait(declined).await;
    assert_eq!(sent.state, JobState::Failed);
    assert!(
        sent.failure.as_ref().unwrap().message.contains("declined"),
        "{:?}",
        sent.failure
    );

    let accepted = text_to(&a, "peer", "second words").await;
    let waiting = waiting_offer(&b).await;
    b.decide(waiting.id, true).await;
    assert_eq!(a.wait(accepted).await.state, JobState::Completed);
    let shown = b.wait(waiting.id).await;
    assert_eq!(shown.state, JobState::Completed, "{:?}", shown.failure);
    assert_eq!(shown.text.as_deref(), Some("second words"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_device_that_is_offline_is_said_to_be_waited_for() {
    // Issue #29: `send --to` said "Waiting for NAME to come online" even when it was.
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "test", Rule::Auto, None).await;
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "now.bin", 100_000, 6);
    let socket = a.socket.clone();
    let sent = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::cli::P2P)
            .arg("--socket")
            .arg(&socket)
            .args(["send", "--to", "peer"])
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");
    assert!(!stderr.contains("come online"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_names_what_is_offered() {
    // Issue #29: p2p inbox showed counts and sizes, never a name.
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    pair(&a, &b).await;
    let src = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..5)
        .map(|i| random_file(src.path(), &format!("part-{i}.bin"), 1000, i))
        .collect();
    let job = a.send_to("peer", &files).await.unwrap();
    let waiting = waiting_offer(&b).await;
    let socket = b.socket.clone();
    let listed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::cli::P2P)
            .arg("--socket")
            .arg(&socket)
            .args(["inbox"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{stdout}");
    assert!(
        stdout.contains("part-0.bin, part-1.bin, part-2.bin and 2 more"),
        "{stdout}"
    );
    b.decide(waiting.id, false).await;
    assert_eq!(a.wait(job).await.state, JobState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_cannot_save_says_so_instead_of_going_away() {
    // Issue #23: a receiver failing to make `From NAME` left its sender with "the other
    // side went away".
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    pair(&a, &b).await;
    set_rule(&b, "test", Rule::Auto, None).await;
    std::fs::write(
        b.downloads.join("From test"),
        b"a file in the folder's place",
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = random_file(src.path(), "blocked.bin", 1000, 7);
    let job = a.send_to("peer", &[file]).await.unwrap();
    let failure = a.wait(job).await.failure.expect("the send fails");
    assert_eq!(failure.kind, ErrorKind::Declined, "{failure:?}");
    assert!(
        failure.message.contains("cannot save into its folder"),
        "{failure:?}"
    );
    let shown = b.downloads.display().to_string();
    assert!(
        !failure.message.contains(&shown),
        "a local path: {failure:?}"
    );
}
