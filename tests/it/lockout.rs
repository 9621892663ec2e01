//! Issue #23, items 2, 3 and 5: the rendezvous cannot be locked by self-made pairs, used
//! as a relay, swept for codes, or asked for TURN credentials without a key exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::SinkExt;
use p2pd::ipc::messages::{Direction, JobState};
use p2pd::rendezvous::ice::IceHandout;
use p2pd::rendezvous::pair::RelayBudget;
use p2pd::rendezvous::server::RendezvousConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::devices::pair;
use crate::flood::{RawWs, next_text, raw_ws, rendezvous_with};
use crate::support::*;

fn can_bind_other_loopback_addresses() {
    let bound = std::net::UdpSocket::bind("127.0.0.2:0");
    if bound.is_err() {
        crate::netns_harness::skip("cannot bind 127.0.0.2 here");
    }
}

/// Sends `json`; `None` once the server has closed the connection.
async fn say(ws: &mut RawWs, json: &str) -> Option<()> {
    ws.send(Message::text(json.to_owned())).await.ok()
}

/// A WebSocket from `ip`, or `None` when the server turned it away.
async fn try_ws(ip: [u8; 4], server: SocketAddr) -> Option<RawWs> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((ip, 0))).ok()?;
    let stream = socket.connect(server).await.ok()?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{server}"), stream)
        .await
        .ok()?;
    Some(ws)
}

fn relay(body: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(body);
    format!(r#"{{"type":"relay","body":"{body}"}}"#)
}

/// One pair made by one address with itself: allocate, claim, each side relays the two
/// blobs the server counts as a key exchange. `None` when the server refused it.
async fn self_made_pair(ip: [u8; 4], server: SocketAddr) -> Option<(RawWs, RawWs)> {
    let mut allocator = try_ws(ip, server).await?;
    say(&mut allocator, r#"{"type":"allocate"}"#).await?;
    let allocated = next_text(&mut allocator).await?;
    let nameplate: serde_json::Value = serde_json::from_str(&allocated).ok()?;
    let nameplate = nameplate["nameplate"].as_u64()?;
    let mut claimer = try_ws(ip, server).await?;
    say(
        &mut claimer,
        &format!(r#"{{"type":"claim","nameplate":{nameplate}}}"#),
    )
    .await?;
    if !next_text(&mut claimer).await?.contains("\"paired\"") {
        return None;
    }
    next_text(&mut allocator).await?;
    for _ in 0..2 {
        say(&mut allocator, &relay(b"pake")).await?;
        say(&mut claimer, &relay(b"pake")).await?;
        next_text(&mut allocator).await?;
        next_text(&mut claimer).await?;
    }
    Some((allocator, claimer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_made_pairs_cannot_lock_the_rendezvous_and_are_cut_at_their_lifetime() {
    can_bind_other_loopback_addresses();
    const LIFETIME: Duration = Duration::from_secs(6);
    tokio::time::timeout(TEST_LIMIT, async {
        // Room for 80 connections; four attacking addresses could hold 128 (32 each).
        let (server, _stop) = rendezvous_with(RendezvousConfig {
            max_connections: 80,
            pair_lifetime: LIFETIME,
            ..Default::default()
        })
        .await;
        let url = format!("ws://{server}");
        let options = || Options {
            rendezvous: Some(url.clone()),
            ..Default::default()
        };
        let a = TestDaemon::start_with(options()).await;
        let b = TestDaemon::start_with(Options {
            device_name: "peer",
            ..options()
        })
        .await;

        // The attack: every address pairs with itself as often as it can and keeps each
        // pair busy with a message a second, as the attacker's did every 50 s.
        let held = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let mut attackers = Vec::new();
        for address in 2..6u8 {
            for _ in 0..12 {
                let (held, refused) = (held.clone(), refused.clone());
                attackers.push(tokio::spawn(async move {
                    let Some((mut one, mut two)) =
                        self_made_pair([127, 0, 0, address], server).await
                    else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        return None;
                    };
                    held.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let said = say(&mut one, &relay(b"still here")).await;
                        if said.is_none()
                            || next_text(&mut two)
                                .await
                                .is_none_or(|t| !t.contains("relay"))
                        {
                            return Some(start.elapsed());
                        }
                        if start.elapsed() > LIFETIME * 3 {
                            return Some(start.elapsed());
                        }
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pairs_held = held.load(Ordering::Relaxed);
        assert!(
            pairs_held <= 4 * 8,
            "{pairs_held} self-made pairs: each address holds at most 16 paired connections"
        );
        assert!(
            refused.load(Ordering::Relaxed) > 0,
            "the cap never refused a pair"
        );

        // During the flood: a device pairing, a send to the paired device (a mailbox
        // meeting), and a coded transfer all complete.
        pair(&a, &b).await;
        let src = tempfile::tempdir().unwrap();
        let file = random_file(src.path(), "during.bin", 256 * 1024, 5);
        let to_device = a
            .send_to("peer", std::slice::from_ref(&file))
            .await
            .unwrap();
        let (coded, code) = a.send(std::slice::from_ref(&file)).await.unwrap();
        let received = b.wait(b.receive(&code).await.unwrap()).await;
        assert_eq!(
            received.state,
            JobState::Completed,
            "{:?}",
            received.failure
        );
        assert_eq!(a.wait(coded).await.state, JobState::Completed);
        let inbox = loop {
            let waiting = b.jobs().await.into_iter().find(|j| {
                j.direction == Direction::Receive && j.state == JobState::AwaitingApproval
            });
            if let Some(job) = waiting {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        b.decide(inbox.id, true).await;
        let sent = a.wait(to_device).await;
        assert_eq!(sent.state, JobState::Completed, "{:?}", sent.failure);

        // However busy, each self-made pair ended at its lifetime.
        for attacker in attackers {
            if let Some(lasted) = attacker.await.unwrap() {
                assert!(
                    lasted < LIFETIME + Duration::from_secs(2),
                    "a busy self-made pair lasted {lasted:?}"
                );
            }
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendezvous_is_no_relay_and_gives_turn_only_after_a_key_exchange() {
    can_bind_other_loopback_addresses();
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, _stop) = rendezvous_with(RendezvousConfig {
            ice: IceHandout {
                stun: vec!["stun:127.0.0.1:3478".into()],
                turn: vec!["turn:127.0.0.1:3478".into()],
                turn_secret: Some(b"secret".to_vec()),
                credential_ttl: p2pd::rendezvous::ice::DEFAULT_CREDENTIAL_TTL,
            },
            ..Default::default()
        })
        .await;
        let ip = [127, 0, 0, 2];

        // Two rejoins on a made-up channel pair up, but relayed no key exchange: STUN only.
        let channel = "ab".repeat(32);
        let mut first = raw_ws(ip, server).await;
        say(
            &mut first,
            &format!(r#"{{"type":"rejoin","channel":"{channel}","sender":true}}"#),
        )
        .await;
        let mut second = raw_ws(ip, server).await;
        say(
            &mut second,
            &format!(r#"{{"type":"rejoin","channel":"{channel}","sender":false}}"#),
        )
        .await;
        let paired = next_text(&mut second).await.unwrap();
        assert!(
            paired.contains("\"paired\"") && !paired.contains("turn:"),
            "{paired}"
        );
        say(&mut second, r#"{"type":"ice"}"#).await.unwrap();
        let ice = next_text(&mut second).await.unwrap();
        assert!(
            ice.contains("\"ice\"") && ice.contains("stun:") && !ice.contains("turn:"),
            "{ice}"
        );

        // A pair that relayed its exchange gets TURN, under a user of its own.
        let mut users = Vec::new();
        for _ in 0..2 {
            let (mut one, _two) = self_made_pair(ip, server).await.unwrap();
            say(&mut one, r#"{"type":"ice"}"#).await.unwrap();
            let ice: serde_json::Value =
                serde_json::from_str(&next_text(&mut one).await.unwrap()).unwrap();
            let turn = &ice["ice_servers"][1];
            assert_eq!(turn["urls"][0], "turn:127.0.0.1:3478", "{ice}");
            let user = turn["username"].as_str().unwrap().to_owned();
            let (expiry, name) = user.split_once(':').unwrap();
            let expiry: u64 = expiry.parse().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(
                expiry <= now + 15 * 60,
                "credentials for minutes, not hours: {user}"
            );
            assert_ne!(name, "p2pd");
            users.push(name.to_owned());
        }
        assert_ne!(users[0], users[1], "a user per pair");

        // Relaying data: cut once the pair's budget is spent.
        let (mut one, mut two) = self_made_pair(ip, server).await.unwrap();
        let chunk = vec![7u8; 40 * 1024];
        let budget = RelayBudget::default();
        let mut carried = 0usize;
        let mut cut = false;
        for _ in 0..(budget.bytes / chunk.len() + 4) {
            say(&mut one, &relay(&chunk)).await.unwrap();
            match next_text(&mut two).await {
                Some(text) if text.contains("\"relay\"") => carried += chunk.len(),
                _ => {
                    cut = true;
                    break;
                }
            }
        }
        assert!(
            cut,
            "the rendezvous relayed {carried} bytes and never stopped"
        );
        assert!(carried <= budget.bytes, "{carried} bytes relayed");
        let told = next_text(&mut one).await.unwrap_or_default();
        assert!(told.contains("signaling budget"), "{told}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_at_the_budget_finds_no_code_and_an_honest_claim_gets_through_after_it() {
    can_bind_other_loopback_addresses();
    const SWEEPERS: u8 = 32;
    tokio::time::timeout(TEST_LIMIT, async {
        let config = RendezvousConfig::default();
        let floor = config.misses_per_minute as usize;
        let (server, _stop) = rendezvous_with(config).await;
        let url = format!("ws://{server}");

        // Twenty codes, allocated as the sweep runs.
        let mut waiting = Vec::new();
        let mut nameplates = Vec::new();
        for _ in 0..20 {
            let mut sender = p2pd::rendezvous::client::RendezvousClient::connect(url.as_str())
                .await
                .unwrap();
            let (nameplate, _) = sender.allocate().await.unwrap();
            nameplates.push(nameplate);
            waiting.push(sender);
        }
        // Each sweeping address claims 1, 2, 3, … in turn, as fast as its own limit of 30
        // claims a minute lets it.
        let next = Arc::new(AtomicUsize::new(1));
        let looked = Arc::new(AtomicUsize::new(0));
        let found = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sweep = Vec::new();
        for address in 0..SWEEPERS {
            let (next, looked, found) = (next.clone(), looked.clone(), found.clone());
            sweep.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let nameplate = next.fetch_add(1, Ordering::Relaxed);
                    let mut ws = raw_ws([127, 0, 1, address + 1], server).await;
                    say(
                        &mut ws,
                        &format!(r#"{{"type":"claim","nameplate":{nameplate}}}"#),
                    )
                    .await;
                    match next_text(&mut ws).await.unwrap_or_default() {
                        text if text.contains("\"paired\"") => {
                            found.fetch_add(1, Ordering::Relaxed);
                        }
                        text if text.contains("unknown_nameplate") => {
                            looked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }));
        }
        for task in sweep {
            task.await.unwrap();
        }
        let (looked, found) = (
            looked.load(Ordering::Relaxed),
            found.load(Ordering::Relaxed),
        );
        eprintln!(
            "sweep: {} claims, {looked} looked up and missed, {found} codes found",
            next.load(Ordering::Relaxed) - 1
        );
        assert_eq!(found, 0, "the sweep found codes among {nameplates:?}");
        // The general and the fresh budget: a burst each, plus 10 s of refill.
        assert!(looked <= 2 * floor + 3, "{looked} misses looked up");

        // The receiver, told "busy" while the budget refills, tries again and finds its
        // code: swept past, not burned.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut receiver = p2pd::rendezvous::client::RendezvousClient::connect(url.as_str())
                .await
                .unwrap();
            match receiver.claim(nameplates[0]).await {
                Ok(()) => break,
                Err(p2pd::rendezvous::SignalError::Busy) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => panic!("an honest claim after the sweep: {error}"),
            }
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_upgrade_from_another_site_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (server, _stop) = rendezvous_with(RendezvousConfig::default()).await;
    let mut request = format!("ws://{server}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(refused.is_err(), "a cross-origin upgrade was accepted");
    let mut own = format!("ws://{server}/").into_client_request().unwrap();
    own.headers_mut()
        .insert("Origin", format!("http://{server}").parse().unwrap());
    tokio_tungstenite::connect_async(own)
        .await
        .expect("the page's own origin is accepted");
}
