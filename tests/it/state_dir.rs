//! One state directory (issue #29): a daemon run by hand by an older version, then as the
//! shipped unit starts it, keeps its fingerprint, its pairings and a send waiting for a
//! paired device.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{JobState, Request, ServerFrame};

use crate::cli::P2PD;
use crate::devices::pair_sockets;
use crate::support::{TestDaemon, random_file};

/// `p2pd` with `HOME` at `home` and nothing else chosen but what `extra` adds (as the unit
/// adds `STATE_DIRECTORY`), its rendezvous `rendezvous`.
fn start(
    home: &Path,
    socket: &Path,
    rendezvous: &str,
    extra: &[(&str, &Path)],
    args: &[&str],
) -> Child {
    let mut command = Command::new(P2PD);
    command
        .arg("--socket")
        .arg(socket)
        .arg("--download-dir")
        .arg(home.join("dl"))
        .args(["--rendezvous", rendezvous, "--ice-bind", "127.0.0.1:0"])
        .args(args)
        .env("HOME", home)
        .env("RUST_LOG", "info")
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("STATE_DIRECTORY")
        .env_remove("P2PD_STATE_DIR")
        .env_remove("P2PD_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.join(format!("p2pd-{}.log", args.len()))).unwrap());
    for (key, value) in extra {
        command.env(key, value);
    }
    let child = command.spawn().expect("spawn p2pd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "p2pd did not create its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

async fn fingerprint(socket: &Path) -> String {
    let mut client = IpcClient::connect(socket).await.unwrap();
    match client.call(Request::Identity).await.unwrap() {
        ServerFrame::Identity { fingerprint, .. } => fingerprint,
        other => panic!("unexpected {other:?}"),
    }
}

async fn devices(socket: &Path) -> usize {
    let mut client = IpcClient::connect(socket).await.unwrap();
    match client.call(Request::Devices).await.unwrap() {
        ServerFrame::Devices(list) => list.len(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_run_by_hand_then_as_the_unit_keeps_its_identity_pairings_and_jobs() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("dl")).unwrap();
    let socket = home.path().join("run").join("p2pd.sock");
    // A third daemon hosts the rendezvous, so the paired one can go offline.
    let hub = TestDaemon::start().await;
    let mut peer = hub.peer().await;
    let rendezvous = hub.daemon.as_ref().unwrap().rendezvous_url().to_owned();

    // An older version run by hand kept everything in ~/.local/share/p2pd/jobs.
    let old = home.path().join(".local/share/p2pd/jobs");
    let by_hand = start(
        home.path(),
        &socket,
        &rendezvous,
        &[],
        &["--state-dir", old.to_str().unwrap()],
    );
    let before = fingerprint(&socket).await;
    pair_sockets(&socket, &peer.socket).await;
    let file = random_file(home.path(), "queued.bin", 1000, 3);
    peer.stop().await;
    let mut client = IpcClient::connect(&socket).await.unwrap();
    let queued = match client
        .call(Request::Send {
            paths: vec![file],
            follow: false,
            path: Default::default(),
            words: None,
            text: None,
            manual: false,
            to: Some(p2pd::ipc::messages::Recipient::Paired("peer".into())),
        })
        .await
        .unwrap()
    {
        ServerFrame::Created(info) => info.id,
        other => panic!("unexpected {other:?}"),
    };
    stop(by_hand);

    // Started as the unit starts it: StateDirectory=p2pd, no state flag.
    let unit_dir = home.path().join(".local/state/p2pd");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let as_unit = start(
        home.path(),
        &socket,
        &rendezvous,
        &[("STATE_DIRECTORY", &unit_dir)],
        &[],
    );
    assert_eq!(fingerprint(&socket).await, before, "the same device");
    assert_eq!(devices(&socket).await, 1, "its pairing");
    let mut client = IpcClient::connect(&socket).await.unwrap();
    let ServerFrame::Jobs(jobs) = client.call(Request::List).await.unwrap() else {
        panic!("no job list");
    };
    assert!(
        jobs.iter()
            .any(|j| j.id == queued && j.state == JobState::WaitingForPeer),
        "the waiting send: {jobs:?}"
    );
    assert!(!old.exists(), "moved, not copied: one identity key on disk");
    stop(as_unit);

    // And by hand again, with no flag: the same directory.
    let again = start(home.path(), &socket, &rendezvous, &[], &[]);
    assert_eq!(fingerprint(&socket).await, before);
    stop(again);
}
