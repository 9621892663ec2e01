//! The rendezvous under a flood from one address while a real pair completes a transfer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use p2pd::ipc::messages::JobState;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const ATTACKER: [u8; 4] = [127, 0, 0, 2];
const FLOOD_FOR: Duration = Duration::from_secs(4);
/// Stays under the per-address connection cap (32), leaving room for the request workers.
const HALF_OPEN: usize = 24;

async fn connect_from_attacker(server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ATTACKER, 0)))?;
    socket.connect(server).await
}

#[derive(Default)]
struct Tally {
    allocated: AtomicUsize,
    busy: AtomicUsize,
    unknown: AtomicUsize,
    dropped: AtomicUsize,
}

/// One WebSocket client asking for `request`, recording what the server answered.
async fn ask(server: SocketAddr, request: &str, tally: &Tally) {
    let Ok(stream) = connect_from_attacker(server).await else {
        tally.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let url = format!("ws://{server}");
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    else {
        tally.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = ws.send(Message::text(request.to_owned())).await;
    match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if text.contains("\"allocated\"") => {
            tally.allocated.fetch_add(1, Ordering::Relaxed);
            // Hold the slot, as a squatter would.
            tokio::time::sleep(FLOOD_FOR).await;
        }
        Ok(Some(Ok(Message::Text(text)))) if text.contains("busy") => {
            tally.busy.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(Ok(Message::Text(text)))) if text.contains("unknown_nameplate") => {
            tally.unknown.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            tally.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_does_not_stop_a_real_pair() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let server = a.daemon.as_ref().unwrap().rendezvous_addr().unwrap();
        if connect_from_attacker(server).await.is_err() {
            crate::netns_harness::skip("cannot bind 127.0.0.2 here");
        }
        let tally = Arc::new(Tally::default());
        let deadline = Instant::now() + FLOOD_FOR;
        let mut flood = Vec::new();

        // Clients that connect and never finish the WebSocket handshake.
        let half_open = Arc::new(AtomicUsize::new(0));
        for _ in 0..HALF_OPEN {
            let half_open = half_open.clone();
            flood.push(tokio::spawn(async move {
                if let Ok(mut stream) = connect_from_attacker(server).await {
                    // Never a byte from us: the server must hang up after its handshake timeout.
                    let mut byte = [0u8; 1];
                    let read =
                        tokio::time::timeout(Duration::from_secs(15), stream.read(&mut byte));
                    if let Ok(Ok(0)) = read.await {
                        half_open.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // Allocations and nameplate guesses as fast as the server answers.
        for worker in 0..8 {
            let tally = tally.clone();
            flood.push(tokio::spawn(async move {
                let mut n = 0u32;
                while Instant::now() < deadline {
                    n += 1;
                    let request = if worker % 2 == 0 {
                        r#"{"type":"allocate"}"#.to_owned()
                    } else {
                        format!(r#"{{"type":"claim","nameplate":{}}}"#, 1000 + n)
                    };
                    ask(server, &request, &tally).await;
                }
            }));
        }

        // Meanwhile, a real transfer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "during-flood.bin", 1024 * 1024, 77);
        let (send_id, code) = a
            .send(std::slice::from_ref(&path))
            .await
            .expect("allocation works during the flood");
        let received = b
            .wait(
                b.receive(&code)
                    .await
                    .expect("claim works during the flood"),
            )
            .await;
        assert_eq!(
            received.state,
            JobState::Completed,
            "{:?}",
            received.failure
        );
        assert_eq!(a.wait(send_id).await.state, JobState::Completed);
        assert_eq!(
            sha256_file(&b.downloads.join("during-flood.bin")),
            sha256_file(&path)
        );

        for task in flood {
            let _ = task.await;
        }
        let allocated = tally.allocated.load(Ordering::Relaxed);
        let busy = tally.busy.load(Ordering::Relaxed);
        let unknown = tally.unknown.load(Ordering::Relaxed);
        let dropped = tally.dropped.load(Ordering::Relaxed);
        eprintln!(
            "flood: {allocated} allocated, {busy} busy, {unknown} guesses answered, {dropped} dropped, {} half-open cut",
            half_open.load(Ordering::Relaxed)
        );
        // The per-address bucket allows a burst of 30 allocations a minute, plus refill.
        assert!(allocated <= 32, "the flood got {allocated} nameplates");
        assert!(busy > 0, "the per-address request limits never answered busy");
        // Claims share one bucket of 30 a minute: guessing nameplates is throttled too.
        assert!(unknown <= 33, "{unknown} nameplate guesses were answered"); // 30 burst + 0.5/s for ~4 s
        assert_eq!(
            half_open.load(Ordering::Relaxed),
            HALF_OPEN,
            "half-open clients were kept past the handshake timeout"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_claiming_a_paired_nameplate_is_told_crowded() {
    use p2pd::rendezvous::SignalError;
    use p2pd::rendezvous::client::RendezvousClient;
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let url = a.daemon.as_ref().unwrap().rendezvous_url().to_owned();
        let mut sender = RendezvousClient::connect(&url).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        let mut receiver = RendezvousClient::connect(&url).await.unwrap();
        receiver.claim(nameplate).await.unwrap();
        sender.wait_for_peer().await.unwrap();
        let mut third = RendezvousClient::connect(&url).await.unwrap();
        assert!(matches!(
            third.claim(nameplate).await,
            Err(SignalError::Crowded)
        ));
        // The pair is unaffected: a relayed message still arrives.
        sender.relay(b"still here").await.unwrap();
        assert_eq!(receiver.recv_relay().await.unwrap(), b"still here");
        // Each side completes its two key-exchange relays, as a real pair does (a claimer
        // that leaves before that abandons the code instead, see below).
        sender.relay(b"tag").await.unwrap();
        receiver.relay(b"spake2").await.unwrap();
        receiver.relay(b"tag").await.unwrap();
        // Once both leave, the nameplate is free and unknown again.
        sender.close().await;
        receiver.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut late = RendezvousClient::connect(&url).await.unwrap();
        assert!(matches!(
            late.claim(nameplate).await,
            Err(SignalError::UnknownCode)
        ));
    })
    .await
    .expect("test finished in time");
}

/// A rendezvous of our own on loopback, with short deadlines or small limits for a test.
pub(crate) async fn rendezvous_with(
    config: p2pd::rendezvous::server::RendezvousConfig,
) -> (SocketAddr, tokio_util::sync::DropGuard) {
    use p2pd::rendezvous::server;
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server::serve(listener, config, stop.clone()));
    (addr, stop.drop_guard())
}

pub(crate) type RawWs = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket from `ip` (any 127.x.y.z) that says nothing yet.
pub(crate) async fn raw_ws(ip: [u8; 4], server: SocketAddr) -> RawWs {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{server}"), stream)
        .await
        .expect("websocket handshake");
    ws
}

/// The next text message, or `None` once the connection is closed.
pub(crate) async fn next_text(ws: &mut RawWs) -> Option<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_many_addresses_give_way_and_pings_do_not_keep_them() {
    use p2pd::rendezvous::client::RendezvousClient;
    use p2pd::rendezvous::server::RendezvousConfig;
    const HELD: usize = 16;
    const FRESH: Duration = Duration::from_millis(1500);
    tokio::time::timeout(TEST_LIMIT, async {
        let other_addresses =
            TcpSocket::new_v4().and_then(|s| s.bind(SocketAddr::from((ATTACKER, 0))));
        if other_addresses.is_err() {
            crate::netns_harness::skip("cannot bind 127.0.0.2 here");
        }
        let (server, _stop) = rendezvous_with(RendezvousConfig {
            max_connections: HELD,
            fresh_deadline: FRESH,
            ..Default::default()
        })
        .await;
        // The server is full of connections from four addresses that never ask for
        // anything and ping to look alive.
        let started = Instant::now();
        let mut squatters = Vec::new();
        for i in 0..HELD {
            let ws = raw_ws([127, 0, 0, 2 + (i % 4) as u8], server).await;
            squatters.push(tokio::spawn(async move {
                let mut ws = ws;
                let mut ping = tokio::time::interval(Duration::from_millis(200));
                let mut said = Vec::new();
                loop {
                    tokio::select! {
                        _ = ping.tick() => {
                            if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                                return (started.elapsed(), said);
                            }
                        }
                        text = next_text(&mut ws) => match text {
                            Some(text) => said.push(text),
                            None => return (started.elapsed(), said),
                        },
                    }
                }
            }));
        }
        // A newcomer still gets a nameplate: the oldest idle connection gives way.
        let mut newcomer = RendezvousClient::connect(&format!("ws://{server}"))
            .await
            .expect("a full rendezvous still admits a newcomer");
        newcomer.allocate().await.expect("the newcomer allocates");
        let mut outcomes = Vec::new();
        for squatter in squatters {
            let outcome = tokio::time::timeout(FRESH + Duration::from_secs(5), squatter)
                .await
                .expect("every idle connection is closed, pings or not");
            outcomes.push(outcome.unwrap());
        }
        let (_, first_said) = &outcomes[0];
        assert!(
            first_said.iter().any(|t| t.contains("\"busy\"")),
            "the evicted connection is told busy: {first_said:?}"
        );
        for (i, (closed_after, _)) in outcomes.iter().enumerate() {
            assert!(
                *closed_after < FRESH + Duration::from_secs(2),
                "squatter {i} pinged its way to {closed_after:?}"
            );
        }
        // The newcomer, which allocated, is still there.
        let mut claimer = RendezvousClient::connect(&format!("ws://{server}"))
            .await
            .unwrap();
        drop(claimer.claim(0).await);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendezvous_full_of_transfers_answers_busy_instead_of_hanging_up() {
    use p2pd::rendezvous::SignalError;
    use p2pd::rendezvous::client::RendezvousClient;
    use p2pd::rendezvous::server::RendezvousConfig;
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, _stop) = rendezvous_with(RendezvousConfig {
            max_connections: 4,
            pake_deadline: Duration::from_secs(60),
            ..Default::default()
        })
        .await;
        let url = format!("ws://{server}");
        let mut pairs = Vec::new();
        for _ in 0..2 {
            let mut sender = RendezvousClient::connect(&url).await.unwrap();
            let (nameplate, _) = sender.allocate().await.unwrap();
            let mut receiver = RendezvousClient::connect(&url).await.unwrap();
            receiver.claim(nameplate).await.unwrap();
            sender.wait_for_peer().await.unwrap();
            pairs.push((sender, receiver));
        }
        let mut late = RendezvousClient::connect(&url)
            .await
            .expect("a full rendezvous still completes the handshake to say why");
        let refused = late.allocate().await;
        assert!(matches!(refused, Err(SignalError::Busy)), "{refused:?}");
        let message = refused.unwrap_err().to_string();
        assert!(
            message.contains("busy") && message.contains("try again"),
            "{message}"
        );
        // Nobody paired gave way.
        let (sender, receiver) = &mut pairs[1];
        sender.relay(b"still here").await.unwrap();
        assert_eq!(receiver.recv_relay().await.unwrap(), b"still here");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_claimer_burns_the_code_and_both_sides_are_told_to_get_a_new_one() {
    use p2pd::rendezvous::SignalError;
    use p2pd::rendezvous::client::RendezvousClient;
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let url = a.daemon.as_ref().unwrap().rendezvous_url().to_owned();
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "wanted.bin", 1000, 5);
        let (send_id, code) = a.send(&[path]).await.unwrap();
        let nameplate: u32 = code.split('-').next().unwrap().parse().unwrap();
        // Someone who saw only the nameplate claims it and says nothing.
        let claimed = Instant::now();
        let mut squatter = RendezvousClient::connect(&url).await.unwrap();
        squatter.claim(nameplate).await.expect("the claim pairs");
        let sent = tokio::time::timeout(Duration::from_secs(20), a.wait(send_id))
            .await
            .expect("the sender is not left waiting for the idle limit");
        let waited = claimed.elapsed();
        assert_eq!(sent.state, JobState::Failed);
        let message = sent.failure.unwrap().message;
        assert!(
            message.contains("someone took the code without completing the key exchange")
                && message.contains("run p2p send again for a new code"),
            "{message}"
        );
        // Default deadline (5 s) plus scheduling slack.
        assert!(waited < Duration::from_secs(9), "took {waited:?}");
        // It got the sender's SPAKE2 message, then the verdict.
        let verdict = loop {
            if let Err(error) = squatter.recv_relay().await {
                break error;
            }
        };
        assert!(
            matches!(verdict, SignalError::Abandoned { .. }),
            "{verdict:?}"
        );
        // The real receiver, arriving late, hears the same rather than "in use".
        let received = b.wait(b.receive(&code).await.unwrap()).await;
        assert_eq!(received.state, JobState::Failed);
        let message = received.failure.unwrap().message;
        assert!(
            message.contains("someone took the code without completing the key exchange")
                && message.contains("ask the sender for a new code"),
            "{message}"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_body_that_is_not_base64_is_refused_to_its_sender_and_the_pair_goes_on() {
    use p2pd::rendezvous::client::RendezvousClient;
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, _stop) = rendezvous_with(Default::default()).await;
        let mut raw = raw_ws([127, 0, 0, 1], server).await;
        raw.send(Message::text(r#"{"type":"allocate"}"#))
            .await
            .unwrap();
        let allocated: serde_json::Value =
            serde_json::from_str(&next_text(&mut raw).await.unwrap()).unwrap();
        let nameplate = allocated["nameplate"].as_u64().unwrap() as u32;
        let mut peer = RendezvousClient::connect(&format!("ws://{server}"))
            .await
            .unwrap();
        peer.claim(nameplate).await.unwrap();
        assert!(next_text(&mut raw).await.unwrap().contains("\"paired\""));
        raw.send(Message::text(r#"{"type":"relay","body":"not base64!"}"#))
            .await
            .unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), next_text(&mut raw))
            .await
            .expect("the sender of the bad body is answered")
            .unwrap();
        assert!(refused.contains("\"protocol\""), "{refused}");
        // Neither the slot nor the peer suffered: the next good message arrives.
        raw.send(Message::text(r#"{"type":"relay","body":"aGk="}"#))
            .await
            .unwrap();
        assert_eq!(peer.recv_relay().await.unwrap(), b"hi");
        peer.relay(b"back").await.unwrap();
        assert!(next_text(&mut raw).await.unwrap().contains("YmFjaw=="));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_tells_each_side_what_it_can_do() {
    use p2pd::rendezvous::client::RendezvousClient;
    use p2pd::rendezvous::{Role, Session};
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, _stop) = rendezvous_with(Default::default()).await;
        let url = format!("ws://{server}");
        let mut sender = RendezvousClient::connect(&url).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        let mut receiver = RendezvousClient::connect(&url).await.unwrap();
        receiver.claim(nameplate).await.unwrap();
        sender.wait_for_peer().await.unwrap();
        let sender_code = format!("{nameplate}-orbit-lantern").parse().unwrap();
        let receiver_code = format!("{nameplate}-orbit-apple").parse().unwrap();
        let (sent, received) = tokio::join!(
            Session::establish(sender, Role::Sender, &sender_code),
            Session::establish(receiver, Role::Receiver, &receiver_code),
        );
        let sent = sent.err().expect("the sender fails").to_string();
        let received = received.err().expect("the receiver fails").to_string();
        assert!(
            sent.contains("wrong code") && sent.contains("run p2p send again"),
            "{sent}"
        );
        assert!(!sent.contains("ask the sender"), "{sent}");
        assert!(
            received.contains("wrong code") && received.contains("ask the sender"),
            "{received}"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_signaling_message_is_reported_as_tampering_not_as_a_peer_gone() {
    use p2pd::ipc::messages::ErrorKind;
    use p2pd::rendezvous::client::RendezvousClient;
    use p2pd::rendezvous::crypto::Pake;
    use p2pd::rendezvous::{Code, Role};
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let url = a.daemon.as_ref().unwrap().rendezvous_url().to_owned();
        // The sender is an attacker's program that holds the code (built from our modules)
        // and alters its first sealed message, as a meddling relay would.
        let mut sender = RendezvousClient::connect(&url).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        let code = Code::generate(nameplate);
        let receive_id = b.receive(&code.to_string()).await.unwrap();
        sender.wait_for_peer().await.unwrap();
        let (pake, message) = Pake::start(Role::Sender, &code);
        sender.relay(&message).await.unwrap();
        let keys = pake.finish(&sender.recv_relay().await.unwrap()).unwrap();
        sender.relay(&keys.our_confirmation()).await.unwrap();
        let mut sealed = keys.confirm(&sender.recv_relay().await.unwrap()).unwrap();
        let mut blob = sealed.seal(br#"{"type":"offer","sdp":"v=0"}"#);
        if let Some(last) = blob.last_mut() {
            *last ^= 1;
        }
        sender.relay(&blob).await.unwrap();
        let received = b.wait(receive_id).await;
        assert_eq!(received.state, JobState::Failed);
        let failure = received.failure.unwrap();
        assert_ne!(failure.kind, ErrorKind::PeerGone, "{}", failure.message);
        assert!(
            failure.message.contains("failed authentication")
                && failure.message.contains("tampering"),
            "{}",
            failure.message
        );
        drop(sender);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimer_that_leaves_before_the_key_exchange_burns_the_code_too() {
    use p2pd::rendezvous::client::RendezvousClient;
    use p2pd::rendezvous::{Role, SignalError};
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, _stop) = rendezvous_with(Default::default()).await;
        let url = format!("ws://{server}");
        let mut sender = RendezvousClient::connect(&url).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        let mut squatter = RendezvousClient::connect(&url).await.unwrap();
        squatter.claim(nameplate).await.unwrap();
        sender.wait_for_peer().await.unwrap();
        squatter.close().await;
        let verdict = sender.recv_relay().await;
        assert!(
            matches!(verdict, Err(SignalError::Abandoned { role: Role::Sender })),
            "{verdict:?}"
        );
        let mut late = RendezvousClient::connect(&url).await.unwrap();
        let refused = late.claim(nameplate).await;
        assert!(
            matches!(
                refused,
                Err(SignalError::Abandoned {
                    role: Role::Receiver
                })
            ),
            "{refused:?}"
        );
    })
    .await
    .expect("test finished in time");
}
