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
            eprintln!("skipped: cannot bind 127.0.0.2 here");
            return;
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
