//! Pairing between two real daemons through the real rendezvous, over the control socket
//! as `p2p pair` drives it: identities, the comparison, what is stored, and what is not.

use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{ErrorKind, Request, ServerFrame};

use crate::support::TestDaemon;

pub async fn identity(daemon: &TestDaemon) -> (String, String) {
    match daemon.client().await.call(Request::Identity).await.unwrap() {
        ServerFrame::Identity { name, fingerprint } => (name, fingerprint),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn devices(daemon: &TestDaemon) -> Vec<(String, String)> {
    match daemon.client().await.call(Request::Devices).await.unwrap() {
        ServerFrame::Devices(list) => list.into_iter().map(|d| (d.name, d.fingerprint)).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn next(client: &mut IpcClient) -> ServerFrame {
    tokio::time::timeout(std::time::Duration::from_secs(30), client.next())
        .await
        .expect("a frame within 30 s")
        .unwrap()
        .expect("the daemon answers")
}

/// Starts a pairing on `a`, joins it from `b` with the code `edit` makes of a's; returns
/// both connections after each saw the other (or b's first frame if it failed).
pub async fn start_pairing(
    a: &TestDaemon,
    b: &TestDaemon,
    edit: impl Fn(&str) -> String,
) -> (IpcClient, IpcClient, ServerFrame, ServerFrame) {
    let mut first = a.client().await;
    first.send(Request::Pair { code: None }).await.unwrap();
    let ServerFrame::PairCode { code } = next(&mut first).await else {
        panic!("no code");
    };
    let mut second = b.client().await;
    second
        .send(Request::Pair {
            code: Some(edit(&code)),
        })
        .await
        .unwrap();
    let (seen_by_b, seen_by_a) = tokio::join!(next(&mut second), next(&mut first));
    (first, second, seen_by_a, seen_by_b)
}

/// Pairs `a` and `b`, both people saying yes.
pub async fn pair(a: &TestDaemon, b: &TestDaemon) {
    pair_sockets(&a.socket, &b.socket).await;
}

/// Pairs the daemons on these control sockets (wherever they run), both people saying yes.
pub async fn pair_sockets(a: &std::path::Path, b: &std::path::Path) {
    let mut first = IpcClient::connect(a).await.unwrap();
    first.send(Request::Pair { code: None }).await.unwrap();
    let ServerFrame::PairCode { code } = next(&mut first).await else {
        panic!("no code");
    };
    let mut second = IpcClient::connect(b).await.unwrap();
    second
        .send(Request::Pair { code: Some(code) })
        .await
        .unwrap();
    let (seen_by_b, seen_by_a) = tokio::join!(next(&mut second), next(&mut first));
    assert!(
        matches!(seen_by_a, ServerFrame::PairPeer { .. }),
        "{seen_by_a:?}"
    );
    assert!(
        matches!(seen_by_b, ServerFrame::PairPeer { .. }),
        "{seen_by_b:?}"
    );
    first.send(Request::Confirm { accept: true }).await.unwrap();
    second
        .send(Request::Confirm { accept: true })
        .await
        .unwrap();
    let (end_a, end_b) = tokio::join!(next(&mut first), next(&mut second));
    assert!(matches!(end_a, ServerFrame::Paired { .. }), "{end_a:?}");
    assert!(matches!(end_b, ServerFrame::Paired { .. }), "{end_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_pair_and_each_keeps_the_other_by_its_fingerprint() {
    let a = TestDaemon::start().await;
    let mut b = a.peer().await;
    let (a_name, a_print) = identity(&a).await;
    let (b_name, b_print) = identity(&b).await;
    assert_eq!((a_name.as_str(), b_name.as_str()), ("test", "peer"));
    let (mut first, mut second, seen_by_a, seen_by_b) = start_pairing(&a, &b, str::to_owned).await;
    // Each is shown exactly what the other's `p2p id` shows.
    assert_eq!(
        seen_by_a,
        ServerFrame::PairPeer {
            name: b_name.clone(),
            fingerprint: b_print.clone()
        }
    );
    assert_eq!(
        seen_by_b,
        ServerFrame::PairPeer {
            name: a_name.clone(),
            fingerprint: a_print.clone()
        }
    );
    first.send(Request::Confirm { accept: true }).await.unwrap();
    second
        .send(Request::Confirm { accept: true })
        .await
        .unwrap();
    let (end_a, end_b) = tokio::join!(next(&mut first), next(&mut second));
    assert_eq!(
        end_a,
        ServerFrame::Paired {
            name: b_name.clone(),
            fingerprint: b_print.clone()
        }
    );
    assert!(matches!(end_b, ServerFrame::Paired { .. }), "{end_b:?}");
    assert_eq!(devices(&a).await, [(b_name.clone(), b_print.clone())]);
    assert_eq!(devices(&b).await, [(a_name.clone(), a_print.clone())]);

    // The identity and the pairing survive a restart (of the daemon without the
    // rendezvous, which would move to another port).
    b.restart().await;
    assert_eq!(identity(&b).await.1, b_print);
    assert_eq!(devices(&b).await, [(a_name.clone(), a_print.clone())]);

    // Unpairing forgets it on this side and tells the other, which forgets this one; a
    // second time there is nothing to forget.
    let reply = a
        .client()
        .await
        .call(Request::Unpair {
            name: b_name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply, ServerFrame::Unpaired { told: true });
    assert!(devices(&a).await.is_empty());
    assert!(devices(&b).await.is_empty());
    let again = a
        .client()
        .await
        .call(Request::Unpair { name: b_name })
        .await
        .unwrap();
    assert!(
        matches!(
            again,
            ServerFrame::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_on_either_side_or_a_wrong_code_stores_nothing() {
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    let (mut first, mut second, _, _) = start_pairing(&a, &b, str::to_owned).await;
    first.send(Request::Confirm { accept: true }).await.unwrap();
    second
        .send(Request::Confirm { accept: false })
        .await
        .unwrap();
    let (end_a, end_b) = tokio::join!(next(&mut first), next(&mut second));
    assert_eq!(
        end_a,
        ServerFrame::Error {
            kind: ErrorKind::Declined,
            message: "not paired: the other device's person said no".into()
        }
    );
    assert_eq!(
        end_b,
        ServerFrame::Error {
            kind: ErrorKind::Declined,
            message: "not paired: you said no".into()
        }
    );
    assert!(devices(&a).await.is_empty() && devices(&b).await.is_empty());

    // Right nameplate, wrong words: neither side gets as far as seeing the other.
    let wrong = |code: &str| {
        let nameplate = code.split('-').next().unwrap();
        let words = if code.ends_with("-acid-acid") {
            "acorn-acorn"
        } else {
            "acid-acid"
        };
        format!("{nameplate}-{words}")
    };
    let (_first, _second, seen_by_a, seen_by_b) = start_pairing(&a, &b, wrong).await;
    for seen in [&seen_by_a, &seen_by_b] {
        assert!(
            matches!(seen, ServerFrame::Error { kind: ErrorKind::WrongCode, message }
                if message == "wrong code, or someone tried to guess it: run p2p pair again for a new code"),
            "{seen:?}"
        );
    }
    assert!(devices(&a).await.is_empty() && devices(&b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_code_cannot_start_a_transfer() {
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    let mut first = a.client().await;
    first.send(Request::Pair { code: None }).await.unwrap();
    let ServerFrame::PairCode { code } = next(&mut first).await else {
        panic!("no code");
    };
    // A transfer's SPAKE2 identities differ from a pairing's: the exchange cannot agree.
    let job = b.receive(&code).await.expect("the receive starts");
    let info = b.wait(job).await;
    let failure = info.failure.expect("the receive fails");
    assert_eq!(failure.kind, ErrorKind::WrongCode, "{failure:?}");
    let end = next(&mut first).await;
    assert!(
        matches!(
            end,
            ServerFrame::Error {
                kind: ErrorKind::WrongCode,
                ..
            }
        ),
        "{end:?}"
    );
    assert!(devices(&a).await.is_empty() && devices(&b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_whose_client_leaves_frees_its_code() {
    let a = TestDaemon::start().await;
    let b = a.peer().await;
    let mut first = a.client().await;
    first.send(Request::Pair { code: None }).await.unwrap();
    let ServerFrame::PairCode { code } = next(&mut first).await else {
        panic!("no code");
    };
    // Ctrl-C in `p2p pair`: the connection closes while it waits for the other device.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut second = b.client().await;
        second
            .send(Request::Pair {
                code: Some(code.clone()),
            })
            .await
            .unwrap();
        match next(&mut second).await {
            ServerFrame::Error {
                kind: ErrorKind::UnknownCode,
                message,
            } => {
                assert_eq!(
                    message,
                    "no pairing is waiting for that code: check it, or run p2p pair on the other device for a new one"
                );
                break;
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "the code still leads somewhere 10 s after its pairing was abandoned: {other:?}"
            ),
        }
    }
    assert!(devices(&a).await.is_empty() && devices(&b).await.is_empty());
}

/// Established TCP connections whose server end is `port` on loopback (`/proc/net/tcp`).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 01: established.
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_devices_cost_one_rendezvous_connection_per_daemon() {
    // Issue #24: a daemon stood at the rendezvous once per paired device; one watch
    // connection now stands for all of its mailboxes.
    const PEERS: usize = 5;
    let hub = TestDaemon::start().await;
    const NAMES: [&str; PEERS] = ["p0", "p1", "p2", "p3", "p4"];
    let mut peers = Vec::new();
    for name in NAMES {
        let peer = hub
            .peer_with(crate::support::Options {
                device_name: name,
                ..Default::default()
            })
            .await;
        pair(&hub, &peer).await;
        peers.push(peer);
    }
    let url = hub.rendezvous_url();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    // Every daemon's watch, and nothing else, once pairing is over.
    let daemons = PEERS + 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut held = connections_to(port);
    while held != daemons && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        held = connections_to(port);
    }
    eprintln!("{daemons} daemons, {PEERS} pairings: {held} connections at the rendezvous");
    assert_eq!(
        held, daemons,
        "one connection per daemon, not per paired device"
    );
    // And each mailbox still answers: the hub sends to every peer.
    let src = tempfile::tempdir().unwrap();
    for (i, (peer, name)) in peers.iter().zip(NAMES).enumerate() {
        crate::paired::set_rule(peer, "test", p2pd::ipc::messages::Rule::Auto, None).await;
        let file = crate::support::random_file(src.path(), &format!("to-{i}.bin"), 1000, i as u64);
        let job = hub.send_to(name, &[file]).await.unwrap();
        let info = hub.wait(job).await;
        assert_eq!(
            info.state,
            p2pd::ipc::messages::JobState::Completed,
            "{:?}",
            info.failure
        );
    }
}
