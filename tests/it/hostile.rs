//! A hostile sender built from p2pd's own modules: it holds the code and passes every
//! authentication, then sends bad offers and bad streams. The receiving daemon must refuse
//! each with a clear reason, leave its download directory byte-for-byte unchanged, and
//! keep serving.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use p2pd::ipc::messages::{ErrorKind, JobInfo, JobState};
use p2pd::rendezvous::client::RendezvousClient;
use p2pd::rendezvous::{Code, Role, Session};
use p2pd::rtc::{self, Connection, RtcSettings};
use p2pd::transfer::link::{Incoming, Link};
use p2pd::transfer::names::Limits;
use p2pd::transfer::wire::{Control, FileEntry};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn settings() -> RtcSettings {
    RtcSettings {
        ice_servers: vec![],
        bind: vec!["127.0.0.1:0".into()],
        relay_only: false,
        udp_buffer_bytes: p2pd::rtc::runtime::UDP_SOCKET_BUFFER_BYTES,
        sctp_window_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES,
        sctp_window_max_bytes: p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES,
        sctp_recovery: Default::default(),
        remote_candidates: Default::default(),
    }
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    listing(dir)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

async fn say(link: &dyn Link, message: Control) {
    // The receiver may already have hung up; that is one of the outcomes we check.
    let _ = link.send_text(message.encode()).await;
}

/// The receiver's next message, skipping progress reports.
async fn hear(link: &dyn Link) -> Option<Control> {
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(10), link.recv()).await {
            Ok(Some(Incoming::Text(text))) => Control::decode(&text).ok(),
            _ => None,
        };
        if !matches!(message, Some(Control::Progress { .. })) {
            return message;
        }
    }
}

fn offer(files: &[(&str, u64)]) -> Control {
    Control::Offer {
        files: files
            .iter()
            .map(|(n, s)| FileEntry {
                name: n.to_string(),
                size: *s,
                ..FileEntry::default()
            })
            .collect(),
        folders: vec![],
        skipped: vec![],
        more: false,
    }
}

/// Connects to `daemon` as a sender with a valid code and runs `script` on the channel.
async fn attack<F, Fut>(daemon: &TestDaemon, script: F) -> JobInfo
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let url = daemon.daemon.as_ref().unwrap().rendezvous_url().to_owned();
    let mut client = RendezvousClient::connect(&url).await.unwrap();
    let (nameplate, _) = client.allocate().await.unwrap();
    let code = Code::generate(nameplate);
    let text = code.to_string();
    let attacker = tokio::spawn(async move {
        client.wait_for_peer().await.unwrap();
        let session = Session::establish(client, Role::Sender, &code)
            .await
            .unwrap();
        let key = session.binding_key();
        let connection = rtc::connect_offerer(session, &settings(), &CancellationToken::new())
            .await
            .unwrap();
        p2pd::transfer::binding::authenticate(&connection, &connection.link, &key, Role::Sender)
            .await
            .unwrap();
        script(connection).await;
    });
    let info = daemon.wait(daemon.receive(&text).await.unwrap()).await;
    tokio::time::timeout(Duration::from_secs(30), attacker)
        .await
        .expect("attacker finished")
        .expect("attacker ran");
    info
}

fn assert_refused(info: &JobInfo, kind: ErrorKind, needle: &str) {
    assert_eq!(info.state, JobState::Failed, "{info:?}");
    let failure = info.failure.as_ref().unwrap();
    assert_eq!(failure.kind, kind, "{failure:?}");
    assert!(
        failure.message.matches(needle).count() == 1,
        "expected {needle:?} once in {:?}",
        failure.message
    );
    assert!(
        !failure.message.chars().any(|c| c.is_control()),
        "unescaped control character: {:?}",
        failure.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_are_refused_before_anything_is_written() {
    tokio::time::timeout(TEST_LIMIT * 2, async {
        let limits = Limits {
            max_files: 5,
            max_total_bytes: u64::MAX,
            max_file_bytes: 1 << 20,
        };
        let daemon = TestDaemon::start_with(Options {
            limits,
            ..Options::default()
        })
        .await;
        std::fs::write(daemon.downloads.join("existing.txt"), b"keep me").unwrap();
        let before = snapshot(&daemon.downloads);
        let outside = daemon.downloads.parent().unwrap().to_owned();
        let cases: Vec<(Vec<(&str, u64)>, &str)> = vec![
            (vec![("../evil", 1)], "not allowed"),
            (vec![("/tmp/p2pd-evil", 1)], "not allowed"),
            (vec![("a/../../evil", 1)], "not allowed"),
            (vec![("C:\\evil", 1)], "not allowed"),
            (vec![("..", 1)], "not allowed"),
            (vec![("evil\u{1b}[2J\u{7}", 1)], "not allowed"),
            (vec![("invoice\u{202E}fdp.exe", 1)], "not allowed"),
            (vec![("x.p2pd-part", 1)], "not allowed"),
            (
                vec![("existing.txt", 1), ("EXISTING.txt", 1)],
                "appears twice",
            ),
            (
                vec![("1", 1), ("2", 1), ("3", 1), ("4", 1), ("5", 1), ("6", 1)],
                "limit of 5",
            ),
            (vec![("big.bin", 2 << 20)], "limit of 1.00 MiB"),
            (vec![], "no files"),
        ];
        for (files, needle) in cases {
            let message = offer(&files);
            let info = attack(&daemon, move |c| async move {
                say(&c.link, message).await;
                assert!(
                    matches!(hear(&c.link).await, Some(Control::Reject { .. })),
                    "offer must be rejected"
                );
            })
            .await;
            assert_refused(&info, ErrorKind::Protocol, needle);
            assert!(
                info.files.is_empty(),
                "a refused offer is never shown to the user"
            );
            assert_eq!(
                snapshot(&daemon.downloads),
                before,
                "download dir changed by {files:?}"
            );
        }
        assert!(!outside.join("evil").exists() && !Path::new("/tmp/p2pd-evil").exists());
        // Free space is checked before anyone is asked (a receiver without size limits).
        let roomy = TestDaemon::start().await;
        let info = attack(&roomy, |c| async move {
            say(&c.link, offer(&[("huge.bin", 1 << 60)])).await;
            assert!(matches!(hear(&c.link).await, Some(Control::Reject { .. })));
        })
        .await;
        assert_refused(&info, ErrorKind::Io, "not enough free space");
        assert!(listing(&roomy.downloads).is_empty());
    })
    .await
    .expect("test finished in time");
}

/// Accepted offer of one 10-byte file, then `stream` runs.
async fn after_accept<F, Fut>(daemon: &TestDaemon, stream: F) -> JobInfo
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    attack(daemon, move |c| async move {
        say(&c.link, offer(&[("data.bin", 10)])).await;
        assert_eq!(hear(&c.link).await, Some(Control::Accept));
        stream(c).await;
    })
    .await
}

/// Starts file 0 from its first byte.
async fn start_file(link: &dyn Link) {
    say(
        link,
        Control::FileStart {
            index: 0,
            offset: 0,
        },
    )
    .await;
}

fn bytes(n: usize) -> bytes::BytesMut {
    bytes::BytesMut::from(&vec![b'x'; n][..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_cut_off_and_nothing_is_published() {
    tokio::time::timeout(TEST_LIMIT * 2, async {
        let daemon = TestDaemon::start().await;
        std::fs::write(daemon.downloads.join("existing.txt"), b"keep me").unwrap();
        let before = snapshot(&daemon.downloads);

        // More bytes than announced.
        let info = after_accept(&daemon, |c| async move {
            start_file(&c.link).await;
            let _ = c.link.send_binary(bytes(11)).await;
            assert!(matches!(hear(&c.link).await, Some(Control::Cancel { .. })));
        })
        .await;
        assert_refused(&info, ErrorKind::Protocol, "more bytes than announced");
        assert_eq!(snapshot(&daemon.downloads), before);

        // Fewer bytes, then a claim that the file is complete.
        let info = after_accept(&daemon, |c| async move {
            start_file(&c.link).await;
            let _ = c.link.send_binary(bytes(5)).await;
            say(
                &c.link,
                Control::FileEnd {
                    index: 0,
                    sha256: hex::encode(sha2::Sha256::digest(b"xxxxx")),
                },
            )
            .await;
            assert!(matches!(hear(&c.link).await, Some(Control::Cancel { .. })));
        })
        .await;
        assert_refused(&info, ErrorKind::Protocol, "file_end does not match");
        assert_eq!(snapshot(&daemon.downloads), before);

        // The right size with a wrong final digest.
        let info = after_accept(&daemon, |c| async move {
            start_file(&c.link).await;
            let _ = c.link.send_binary(bytes(10)).await;
            say(
                &c.link,
                Control::FileEnd {
                    index: 0,
                    sha256: "00".repeat(32),
                },
            )
            .await;
            loop {
                match hear(&c.link).await {
                    Some(Control::Progress { .. }) => continue,
                    other => {
                        assert!(
                            matches!(
                                other,
                                Some(Control::FileFailed {
                                    index: 0,
                                    mismatch: true,
                                    ..
                                })
                            ),
                            "{other:?}"
                        );
                        break;
                    }
                }
            }
        })
        .await;
        assert_refused(
            &info,
            ErrorKind::VerificationFailed,
            "do not match the sender's SHA-256",
        );
        assert_eq!(snapshot(&daemon.downloads), before);

        // A flood of tiny messages outside any file.
        let info = after_accept(&daemon, |c| async move {
            for _ in 0..20_000 {
                if c.link.send_binary(bytes(1)).await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert_refused(&info, ErrorKind::Protocol, "file data outside a file");
        assert_eq!(snapshot(&daemon.downloads), before);

        // Files out of order.
        let info = after_accept(&daemon, |c| async move {
            say(
                &c.link,
                Control::FileStart {
                    index: 3,
                    offset: 0,
                },
            )
            .await;
            let _ = hear(&c.link).await;
        })
        .await;
        assert_refused(&info, ErrorKind::Protocol, "out of order");
        assert_eq!(snapshot(&daemon.downloads), before);

        // Still serving, and an honest sender still gets through.
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "honest.bin", 4096, 3);
        let (_, code) = daemon.send(std::slice::from_ref(&path)).await.unwrap();
        let received = daemon.wait(daemon.receive(&code).await.unwrap()).await;
        assert_eq!(received.state, JobState::Completed);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_data_channels_from_the_peer_are_closed_and_ignored() {
    tokio::time::timeout(TEST_LIMIT, async {
        let daemon = TestDaemon::start().await;
        let content = b"0123456789".to_vec();
        let digest = hex::encode(sha2::Sha256::digest(&content));
        let info = attack(&daemon, move |c| async move {
            // Two extra channels: the receiver must close each, not hold it unpolled. Both
            // are opened first: one opened after the other closed may reuse its stream id
            // while the receiver still releases it, and webrtc-rs 0.21 then never announces
            // it to the receiver (seen under load; a quirk of the stack, noted in the note).
            let mut extras = Vec::new();
            for label in ["evil", "evil-2"] {
                extras.push((label, c.pc.create_data_channel(label, None).await.unwrap()));
            }
            for (label, extra) in extras {
                // Generous: with the resume campaigns loading both cores in the same run, a
                // close took over 5 s once; a channel left open never closes at all.
                let closed = tokio::time::timeout(Duration::from_secs(20), async {
                    while let Some(event) = extra.poll().await {
                        if let webrtc::data_channel::DataChannelEvent::OnOpen = event {
                            let _ = extra.send_text("hello?").await;
                        }
                        if let webrtc::data_channel::DataChannelEvent::OnClose = event {
                            return;
                        }
                    }
                })
                .await;
                assert!(closed.is_ok(), "the receiver left channel {label} open");
            }
            say(&c.link, offer(&[("data.bin", 10)])).await;
            assert_eq!(hear(&c.link).await, Some(Control::Accept));
            start_file(&c.link).await;
            let _ = c
                .link
                .send_binary(bytes::BytesMut::from(&content[..]))
                .await;
            say(
                &c.link,
                Control::FileEnd {
                    index: 0,
                    sha256: digest,
                },
            )
            .await;
            loop {
                match hear(&c.link).await {
                    Some(Control::Progress { .. }) => continue,
                    other => {
                        assert_eq!(other, Some(Control::FileVerified { index: 0 }));
                        break;
                    }
                }
            }
            say(&c.link, Control::Done).await;
            c.link.flush(Duration::from_secs(2)).await;
        })
        .await;
        assert_eq!(info.state, JobState::Completed, "{:?}", info.failure);
        assert_eq!(
            std::fs::read(daemon.downloads.join("data.bin")).unwrap(),
            b"0123456789"
        );
    })
    .await
    .expect("test finished in time");
}

mod mismatched_certificate {
    //! A peer that announces one DTLS certificate in its (sealed, authentic) SDP and
    //! presents another on the wire: the transfer must be refused.

    use std::sync::Arc;

    use tokio::sync::mpsc;
    use webrtc::peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
        RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCSessionDescription,
    };

    use super::*;

    struct Candidates(mpsc::Sender<RTCIceCandidateInit>);

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Candidates {
        async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
            if let Ok(init) = event.candidate.to_json() {
                let _ = self.0.try_send(init);
            }
        }
    }

    /// Replaces the first byte of every SDP fingerprint, so it names a certificate nobody has.
    fn forge_fingerprint(sdp: &str) -> String {
        sdp.lines()
            .map(|line| match line.strip_prefix("a=fingerprint:sha-256 ") {
                Some(value) => {
                    let first = if value.starts_with("00") { "11" } else { "00" };
                    format!("a=fingerprint:sha-256 {first}{}", &value[2..])
                }
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\r\n")
            + "\r\n"
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_certificate_other_than_the_signaled_one_is_refused() {
        tokio::time::timeout(TEST_LIMIT, async {
            let daemon = TestDaemon::start().await;
            let url = daemon.daemon.as_ref().unwrap().rendezvous_url().to_owned();
            let mut client = RendezvousClient::connect(&url).await.unwrap();
            let (nameplate, _) = client.allocate().await.unwrap();
            let code = Code::generate(nameplate);
            let text = code.to_string();
            let (tx, mut local_candidates) = mpsc::channel(64);
            let pc = PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_handler(Arc::new(Candidates(tx)))
                .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
                .build()
                .await
                .unwrap();
            let pc: Arc<dyn PeerConnection> = Arc::new(pc);
            let attacker = {
                let pc = pc.clone();
                tokio::spawn(async move {
                    client.wait_for_peer().await.unwrap();
                    let mut session = Session::establish(client, Role::Sender, &code).await.unwrap();
                    let _channel = pc.create_data_channel(p2pd::rtc::peer::CHANNEL_LABEL, None).await.unwrap();
                    let offer = pc.create_offer(None).await.unwrap();
                    let forged = forge_fingerprint(&offer.sdp);
                    assert_ne!(forged, offer.sdp.replace("\r\n", "\n").replace('\n', "\r\n"));
                    pc.set_local_description(offer).await.unwrap();
                    let message = serde_json::json!({"type": "offer", "sdp": forged});
                    session.send(message.to_string().as_bytes()).await.unwrap();
                    loop {
                        tokio::select! {
                            Some(candidate) = local_candidates.recv() => {
                                let message = serde_json::json!({"type": "candidate", "candidate": candidate});
                                if session.send(message.to_string().as_bytes()).await.is_err() { break; }
                            }
                            received = session.recv() => {
                                let Ok(bytes) = received else { break };
                                let signal: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                                match signal["type"].as_str() {
                                    Some("answer") => {
                                        let sdp = signal["sdp"].as_str().unwrap().to_owned();
                                        pc.set_remote_description(RTCSessionDescription::answer(sdp).unwrap()).await.unwrap();
                                    }
                                    Some("candidate") => {
                                        let init: RTCIceCandidateInit = serde_json::from_value(signal["candidate"].clone()).unwrap();
                                        let _ = pc.add_ice_candidate(init).await;
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                })
            };
            let info = daemon.wait(daemon.receive(&text).await.unwrap()).await;
            attacker.abort();
            let _ = pc.close().await;
            assert_eq!(info.state, JobState::Failed, "{info:?}");
            assert!(info.files.is_empty(), "no offer may be seen over an unauthenticated channel");
            let failure = info.failure.unwrap();
            assert!(
                failure.message.contains("interception") || failure.message.contains("could not prove"),
                "{failure:?}"
            );
            assert!(listing(&daemon.downloads).is_empty());
        })
        .await
        .expect("test finished in time");
    }
}

/// A peer that sends without waiting for the receiver to consume: the receiving side takes
/// no more than its SCTP window and the message queues in front of it (the stack's and the
/// channel's); the rest stays in the peer's own send buffer, and nothing is lost once the
/// receiver reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_ignores_backpressure_is_held_to_the_window() {
    tokio::time::timeout(TEST_LIMIT, async {
        let daemon = TestDaemon::start().await;
        let url = daemon.daemon.as_ref().unwrap().rendezvous_url().to_owned();
        let mut client = RendezvousClient::connect(&url).await.unwrap();
        let (nameplate, _) = client.allocate().await.unwrap();
        let code = Code::generate(nameplate);
        let receiving = {
            let code = code.clone();
            tokio::spawn(async move {
                let mut client = RendezvousClient::connect(&url).await.unwrap();
                client.claim(code.nameplate).await.unwrap();
                let session = Session::establish(client, Role::Receiver, &code)
                    .await
                    .unwrap();
                rtc::connect_answerer(session, &settings(), &CancellationToken::new())
                    .await
                    .unwrap()
            })
        };
        client.wait_for_peer().await.unwrap();
        let session = Session::establish(client, Role::Sender, &code)
            .await
            .unwrap();
        let flood = rtc::connect_offerer(session, &settings(), &CancellationToken::new())
            .await
            .unwrap();
        let receiver = receiving.await.unwrap();
        // Sends until a send has waited half a second: the flood's own send buffer is full
        // because the receiver stopped taking more.
        const CHUNK: usize = 64 * 1024;
        let mut sent = 0;
        while sent < 256 * 1024 * 1024 {
            let chunk = bytes::BytesMut::from(&[7u8; CHUNK][..]);
            match tokio::time::timeout(Duration::from_millis(500), flood.link.send_binary(chunk))
                .await
            {
                Ok(result) => result.unwrap(),
                Err(_) => break,
            }
            sent += CHUNK;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = sent - flood.link.outstanding_bytes().await;
        let bound = p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES as usize
            + (p2pd::rtc::channel::STACK_QUEUE_MESSAGES
                + p2pd::rtc::channel::INBOUND_QUEUE_MESSAGES)
                * CHUNK;
        // One message in the pump's hands and one in reassembly on top.
        assert!(
            held <= bound + 2 * CHUNK,
            "the receiver took {held} of {sent} bytes, its window and queues are {bound}"
        );
        assert!(
            held < sent,
            "the flood was never held back: {sent} bytes sent"
        );
        let mut got = 0;
        while got < held {
            match tokio::time::timeout(Duration::from_secs(10), receiver.link.recv()).await {
                Ok(Some(Incoming::Binary(data))) => got += data.len(),
                other => panic!("after {got} bytes: {other:?}"),
            }
        }
        // Reading frees the window: the rest arrives too.
        while got < sent {
            match tokio::time::timeout(Duration::from_secs(10), receiver.link.recv()).await {
                Ok(Some(Incoming::Binary(data))) => got += data.len(),
                other => panic!("after {got} of {sent} bytes: {other:?}"),
            }
        }
        assert_eq!(got, sent);
    })
    .await
    .expect("test finished in time");
}
