//! Issue #24: several rendezvous instances sharing one Redis (`--store redis://…`), each
//! serving any client. A real `redis-server` is started and stopped by each test on a free
//! port; without one the test fails (as CI installs it), it does not pass by skipping.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p2pd::ipc::messages::JobState;
use p2pd::rendezvous::client::RendezvousClient;
use p2pd::rendezvous::instances::Instances;
use p2pd::rendezvous::limits::PerAddressLimits;
use p2pd::rendezvous::messages::ReclaimToken;
use p2pd::rendezvous::server::RendezvousConfig;
use p2pd::rendezvous::store::StoreKind;
use p2pd::rendezvous::{Role, Session, SignalError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::DropGuard;

use crate::flood::{next_text, raw_ws, rendezvous_with};
use crate::support::*;

use crate::redis_server::Redis;

/// One rendezvous instance on `redis`, with `config`'s other settings.
pub(crate) async fn instance_with(
    redis: &Redis,
    config: RendezvousConfig,
) -> (SocketAddr, DropGuard) {
    let (addr, stop) = rendezvous_with(RendezvousConfig {
        store: StoreKind::Redis(redis.url()),
        ..config
    })
    .await;
    wait_for_health(addr, 200).await;
    (addr, stop)
}

async fn instance(redis: &Redis) -> (SocketAddr, DropGuard) {
    instance_with(redis, RendezvousConfig::default()).await
}

/// `GET /healthz`: its status and body.
pub(crate) async fn health(addr: SocketAddr) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: rendezvous\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

pub(crate) async fn wait_for_health(addr: SocketAddr, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        if health(addr).await.0 == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{addr} never answered {status}: {:?}",
            health(addr).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn ws(addr: SocketAddr) -> String {
    format!("ws://{addr}")
}

pub(crate) async fn daemon_on(addr: SocketAddr, name: &'static str) -> TestDaemon {
    TestDaemon::start_with(Options {
        rendezvous: Some(ws(addr)),
        device_name: name,
        ..Default::default()
    })
    .await
}

/// Sends a file from `sender` to `receiver` with a code, checking it arrives whole.
pub(crate) async fn transfer(sender: &TestDaemon, receiver: &TestDaemon, name: &str, seed: u64) {
    let src = tempfile::tempdir().unwrap();
    let path = random_file(src.path(), name, 512 * 1024, seed);
    let (send_id, code) = sender.send(std::slice::from_ref(&path)).await.unwrap();
    let received = receiver.wait(receiver.receive(&code).await.unwrap()).await;
    assert_eq!(
        received.state,
        JobState::Completed,
        "{:?}",
        received.failure
    );
    assert_eq!(sender.wait(send_id).await.state, JobState::Completed);
    assert_eq!(
        sha256_file(&receiver.downloads.join(name)),
        sha256_file(&path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_on_one_instance_and_a_receiver_on_another_transfer_a_file() {
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start();
        let (one, _one) = instance(&redis).await;
        let (two, _two) = instance(&redis).await;
        let a = daemon_on(one, "a").await;
        let b = daemon_on(two, "b").await;
        transfer(&a, &b, "across.bin", 1).await;
        transfer(&b, &a, "back.bin", 2).await;
        // Paired, each watching its mailboxes on its own instance: a send to a device is
        // knocked across instances, through Redis.
        crate::devices::pair(&a, &b).await;
        crate::paired::set_rule(&b, "a", p2pd::ipc::messages::Rule::Auto, None).await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "knocked.bin", 64 * 1024, 3);
        let job = a.send_to("b", std::slice::from_ref(&path)).await.unwrap();
        let sent = a.wait(job).await;
        assert_eq!(sent.state, JobState::Completed, "{:?}", sent.failure);
        assert_eq!(
            sha256_file(&b.downloads.join("From a").join("knocked.bin")),
            sha256_file(&path)
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_allocations_on_two_instances_never_share_a_nameplate() {
    const EACH: usize = 1000;
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start();
        // Loopback is one address: lift the per-address limits, which stay per instance.
        let roomy = || RendezvousConfig {
            max_connections: 2 * EACH,
            per_address: PerAddressLimits {
                connections: 2 * EACH,
                paired: 2 * EACH,
                allocations_per_minute: 100 * EACH as u32,
                claims_per_minute: 100 * EACH as u32,
            },
            ..Default::default()
        };
        let (one, _one) = instance_with(&redis, roomy()).await;
        let (two, _two) = instance_with(&redis, roomy()).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..2 * EACH {
            let url = ws(if i % 2 == 0 { one } else { two });
            tasks.push(tokio::spawn(async move {
                let mut client = RendezvousClient::connect(url.as_str()).await?;
                let (nameplate, _) = client.allocate().await?;
                Ok::<_, SignalError>((nameplate, client))
            }));
        }
        let mut held = Vec::new();
        let mut failures = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(got) => held.push(got),
                Err(error) => failures.push(error.to_string()),
            }
        }
        let took = start.elapsed();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let unique: HashSet<u32> = held.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "{} allocations on two instances in {took:?} ({:.0}/s), {} distinct nameplates",
            held.len(),
            held.len() as f64 / took.as_secs_f64(),
            unique.len()
        );
        assert_eq!(unique.len(), 2 * EACH, "a nameplate was handed out twice");
        // Every one of them is claimable from the other instance.
        let (nameplate, _) = &held[0];
        let mut claimer = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        claimer
            .claim(*nameplate)
            .await
            .expect("claimed across instances");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_redis_over_a_unix_socket() {
    // `redis+unix://`, as with `SupplementaryGroups=redis` beside a local Redis.
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start_unix();
        let (one, _one) = instance(&redis).await;
        let (two, _two) = instance(&redis).await;
        let a = daemon_on(one, "a").await;
        let b = daemon_on(two, "b").await;
        transfer(&a, &b, "through-a-socket.bin", 4).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_outlives_the_instance_its_sender_waited_on() {
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start();
        let (one, one_stops) = instance(&redis).await;
        let (two, _two) = instance(&redis).await;
        let instances = Instances::new(&[ws(one), ws(two)], None).unwrap();
        let mut sender = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        // The sender's instance stops (a deploy; one that dies leaves the store alike).
        drop(one_stops);
        let stopped = Instant::now();
        // The receiver claims on the other instance while the sender is away: the claim
        // waits for it to come back instead of failing.
        let claim = tokio::spawn(async move {
            let mut receiver = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
            receiver.claim(nameplate).await.map(|()| receiver)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        instances
            .wait_for_peer(&mut sender)
            .await
            .expect("the sender waits again in its nameplate and is met");
        let receiver = claim.await.unwrap().expect("the waiting claim is paired");
        eprintln!(
            "paired {:?} after the sender's instance stopped (the claim came first)",
            stopped.elapsed()
        );
        let code = format!("{nameplate}-orbit-lantern").parse().unwrap();
        let (sent, received) = tokio::join!(
            Session::establish(sender, Role::Sender, &code),
            Session::establish(receiver, Role::Receiver, &code),
        );
        let (mut sent, mut received) = (sent.unwrap(), received.unwrap());
        sent.send(b"through the other instance").await.unwrap();
        assert_eq!(
            received.recv().await.unwrap(),
            b"through the other instance"
        );

        // Only the allocator's token takes a nameplate back.
        let mut allocator = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        let (theirs, _) = allocator.allocate().await.unwrap();
        let mut thief = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        let stolen = thief.reclaim(theirs, ReclaimToken("0".repeat(32))).await;
        assert!(matches!(stolen, Err(SignalError::Expired)), "{stolen:?}");
        let mut receiver = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        receiver.claim(theirs).await.unwrap();
        allocator.wait_for_peer().await.unwrap();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_guess_on_one_instance_burns_the_code_for_a_claim_on_another() {
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start();
        let (one, _one) = instance(&redis).await;
        let (two, _two) = instance(&redis).await;
        let mut sender = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        // A guesser on the other instance claims it: the pair is made across instances,
        // and nobody else gets the code meanwhile, on either instance.
        let mut guesser = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        guesser.claim(nameplate).await.unwrap();
        sender.wait_for_peer().await.unwrap();
        for other in [one, two] {
            let mut third = RendezvousClient::connect(ws(other).as_str()).await.unwrap();
            let refused = third.claim(nameplate).await;
            assert!(matches!(refused, Err(SignalError::Crowded)), "{refused:?}");
        }
        let right = format!("{nameplate}-orbit-lantern").parse().unwrap();
        let wrong = format!("{nameplate}-orbit-apple").parse().unwrap();
        let (sent, guessed) = tokio::join!(
            Session::establish(sender, Role::Sender, &right),
            Session::establish(guesser, Role::Receiver, &wrong),
        );
        let sent = sent.err().expect("the sender fails").to_string();
        let guessed = guessed.err().expect("the guess fails").to_string();
        assert!(
            sent.contains("wrong code") && sent.contains("run p2p send again"),
            "{sent}"
        );
        assert!(guessed.contains("wrong code"), "{guessed}");
        // The code had its one attempt: a claim on either instance finds nothing (once
        // the burn, sent as both sides fail, has reached the store).
        for other in [one, two] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut late = RendezvousClient::connect(ws(other).as_str()).await.unwrap();
                match late.claim(nameplate).await {
                    Err(SignalError::Crowded) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    refused => {
                        assert!(
                            matches!(refused, Err(SignalError::UnknownCode)),
                            "{refused:?}"
                        );
                        break;
                    }
                }
            }
        }

        // A silent claimer on one instance burns a code allocated on the other.
        let (server, _short) = instance_with(
            &redis,
            RendezvousConfig {
                pake_deadline: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await;
        let mut sender = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        let mut squatter = RendezvousClient::connect(ws(server).as_str())
            .await
            .unwrap();
        squatter.claim(nameplate).await.unwrap();
        sender.wait_for_peer().await.unwrap();
        let verdict = sender.recv_relay().await;
        assert!(
            matches!(verdict, Err(SignalError::Abandoned { role: Role::Sender })),
            "{verdict:?}"
        );
        let mut late = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        let refused = late.claim(nameplate).await;
        assert!(
            matches!(refused, Err(SignalError::Abandoned { .. })),
            "{refused:?}"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_instance_answers_503_and_refuses_then_recovers_by_itself() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut redis = Redis::start();
        let port = redis.port();
        let (one, _one) = instance(&redis).await;
        let (two, _two) = instance(&redis).await;
        assert_eq!(health(one).await, (200, "ok\n".to_owned()));
        let mut waiting = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        waiting.allocate().await.unwrap();

        redis.kill();
        let noticed = wait_for_health(one, 503).await;
        eprintln!("503 after {noticed:?}");
        let (_, why) = health(one).await;
        assert!(why.contains("redis"), "{why}");
        wait_for_health(two, 503).await;
        // Whoever waited on the store is told at once, not left waiting for nothing.
        let told = tokio::time::timeout(Duration::from_secs(5), waiting.wait_for_peer())
            .await
            .expect("the waiting allocator is told");
        assert!(matches!(told, Err(SignalError::Busy)), "{told:?}");
        // New allocations are refused with the cause.
        let mut raw = raw_ws([127, 0, 0, 1], one).await;
        futures_util::SinkExt::send(
            &mut raw,
            tokio_tungstenite::tungstenite::Message::text(r#"{"type":"allocate"}"#),
        )
        .await
        .unwrap();
        let refused = next_text(&mut raw).await.unwrap();
        assert!(
            refused.contains("\"busy\"") && refused.contains("cannot reach its store"),
            "{refused}"
        );
        let mut client = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        assert!(matches!(client.allocate().await, Err(SignalError::Busy)));

        // Redis comes back (empty: no persistence): both instances serve again, and a
        // pair across them transfers.
        let _redis = Redis::start_on(port);
        let recovered = wait_for_health(one, 200).await;
        wait_for_health(two, 200).await;
        eprintln!("200 again {recovered:?} after redis listened");
        let a = daemon_on(one, "a").await;
        let b = daemon_on(two, "b").await;
        transfer(&a, &b, "after.bin", 3).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2pd_rendezvous_takes_a_store_and_refuses_an_unknown_one() {
    let refused = Command::new(crate::cli::P2PD)
        .args([
            "rendezvous",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "mongodb://x",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("unknown store") && said.contains("redis://"),
        "{said}"
    );

    let redis = Redis::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut server = Command::new(crate::cli::P2PD)
        .args(["rendezvous", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", &redis.url()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let healthy = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() && health(addr).await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    healthy.expect("p2pd rendezvous --store redis://… answers 200 on /healthz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoiners_meet_across_instances_and_a_newer_connection_replaces_an_older_one() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start();
        let (one, _one) = instance(&redis).await;
        let (two, _two) = instance(&redis).await;
        let channel = "cd".repeat(32);
        let rejoin = |sender: bool| {
            Message::text(format!(
                r#"{{"type":"rejoin","channel":"{channel}","sender":{sender}}}"#
            ))
        };
        let mut older = raw_ws([127, 0, 0, 1], one).await;
        older.send(rejoin(true)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The same side again, through the other instance (its daemon reconnected).
        let mut newer = raw_ws([127, 0, 0, 1], two).await;
        newer.send(rejoin(true)).await.unwrap();
        let replaced = next_text(&mut older).await.unwrap();
        assert!(
            replaced.contains("\"crowded\"") && replaced.contains("replaced"),
            "{replaced}"
        );
        // The other side arrives at the first instance and meets the newer one.
        let mut receiver = raw_ws([127, 0, 0, 1], one).await;
        receiver.send(rejoin(false)).await.unwrap();
        assert!(
            next_text(&mut receiver)
                .await
                .unwrap()
                .contains("\"paired\"")
        );
        assert!(next_text(&mut newer).await.unwrap().contains("\"paired\""));
        receiver
            .send(Message::text(r#"{"type":"relay","body":"aGk="}"#))
            .await
            .unwrap();
        assert!(next_text(&mut newer).await.unwrap().contains("aGk="));
        // One leaves: the other, on the other instance, hears it.
        receiver.close(None).await.unwrap();
        assert!(next_text(&mut newer).await.unwrap().contains("peer_gone"));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_refused_by_the_waiting_sides_instance_leaves_the_code_for_a_later_one() {
    tokio::time::timeout(TEST_LIMIT, async {
        let redis = Redis::start();
        // The first instance lets an address hold two paired connections; they are
        // counted where each connection is.
        let (one, _one) = instance_with(
            &redis,
            RendezvousConfig {
                per_address: PerAddressLimits {
                    paired: 2,
                    ..Default::default()
                },
                pake_deadline: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .await;
        let (two, _two) = instance(&redis).await;
        // A pair on the first instance fills its address's share there.
        let mut first = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        let (nameplate, _) = first.allocate().await.unwrap();
        let mut second = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        second.claim(nameplate).await.unwrap();
        first.wait_for_peer().await.unwrap();

        let mut sender = RendezvousClient::connect(ws(one).as_str()).await.unwrap();
        let (nameplate, _) = sender.allocate().await.unwrap();
        let mut early = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        early.claim(nameplate).await.unwrap();
        let refused = early.recv_relay().await;
        assert!(matches!(refused, Err(SignalError::Busy)), "{refused:?}");

        // Once the address's pair on the first instance ends, the code still works.
        first.close().await;
        second.close().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut receiver = RendezvousClient::connect(ws(two).as_str()).await.unwrap();
        receiver.claim(nameplate).await.expect("the code waited");
        sender
            .wait_for_peer()
            .await
            .expect("the sender hears its peer");
        sender.relay(b"hello").await.unwrap();
        assert_eq!(receiver.recv_relay().await.unwrap(), b"hello");
    })
    .await
    .expect("test finished in time");
}
