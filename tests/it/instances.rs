//! Several instances of one rendezvous on the daemon (issue #24): a daemon given an
//! instance that is down and one that is up transfers as if given only the one up.

use p2pd::ipc::messages::JobState;
use p2pd::rendezvous::server::RendezvousConfig;

use crate::flood::rendezvous_with;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_is_down_is_passed_over() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (live, _stop) = rendezvous_with(RendezvousConfig::default()).await;
        // Nothing listens on port 1: connections to it are refused at once.
        let urls = format!("ws://127.0.0.1:1,ws://{live}");
        let options = || Options {
            rendezvous: Some(urls.clone()),
            ..Default::default()
        };
        let a = TestDaemon::start_with(options()).await;
        let b = TestDaemon::start_with(options()).await;
        let src = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "either.bin", 200_000, 71);
        for _ in 0..3 {
            let (sent, code) = a.send(std::slice::from_ref(&path)).await.unwrap();
            let got = b.wait(b.receive(&code).await.unwrap()).await;
            assert_eq!(got.state, JobState::Completed, "{:?}", got.failure);
            assert_eq!(a.wait(sent).await.state, JobState::Completed);
        }
    })
    .await
    .expect("test finished in time");
}
