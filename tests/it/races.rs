//! Files swapped inside a sent folder between the offer and the read: a FIFO must not hang
//! the job or the daemon, and a symlink or another file must not be sent in its place.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use p2pd::ipc::messages::JobState;

use crate::support::{TEST_LIMIT, TestDaemon, listing, random_file};

/// How long a daemon may take to stop once its jobs have ended.
const STOP_LIMIT: Duration = Duration::from_secs(15);

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Makes `path` look like `like` to a size-and-time check.
fn same_size_and_time(path: &Path, like: &Path) {
    let meta = std::fs::metadata(like).unwrap();
    std::fs::write(path, vec![b'x'; meta.len() as usize]).unwrap();
    let when = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[derive(Debug, Clone, Copy)]
enum Swap {
    Fifo,
    SymlinkOutside,
    OtherFile,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_after_the_offer_is_never_sent_and_never_hangs() {
    for swap in [Swap::Fifo, Swap::SymlinkOutside, Swap::OtherFile] {
        tokio::time::timeout(TEST_LIMIT, async {
            let mut a = TestDaemon::start().await;
            let mut b = a.peer().await;
            let root = tempfile::tempdir().unwrap();
            let race = root.path().join("race");
            std::fs::create_dir_all(&race).unwrap();
            let outside = root.path().join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            random_file(&race, "a.bin", 2 << 20, 7);
            let secret = outside.join("secret.txt");
            std::fs::write(&secret, b"the secret outside the folder\n").unwrap();
            let b_txt = race.join("b.txt");
            same_size_and_time(&b_txt, &secret);

            let (send_id, code) = a.send(std::slice::from_ref(&race)).await.expect("send");
            // The offer is made; swap b.txt before anything is read.
            let tmp = race.join("b.tmp");
            match swap {
                Swap::Fifo => mkfifo(&tmp),
                Swap::SymlinkOutside => std::os::unix::fs::symlink(&secret, &tmp).unwrap(),
                Swap::OtherFile => same_size_and_time(&tmp, &b_txt),
            }
            std::fs::rename(&tmp, &b_txt).unwrap();

            let recv_id = b.receive(&code).await.expect("receive");
            let sent = a.wait(send_id).await;
            assert_eq!(sent.state, JobState::Failed, "{swap:?}");
            let message = sent.failure.unwrap().message;
            assert!(
                message.contains("changed while it was being sent"),
                "{swap:?}: {message}"
            );
            let received = b.wait(recv_id).await;
            assert_eq!(received.state, JobState::Failed, "{swap:?}");
            assert!(
                listing(&b.downloads).is_empty(),
                "{swap:?} left: {:?}",
                listing(&b.downloads)
            );
            // Nothing of the daemon stays blocked on the FIFO: both stop promptly.
            tokio::time::timeout(STOP_LIMIT, async {
                a.stop().await;
                b.stop().await;
            })
            .await
            .expect("the daemons stop");
        })
        .await
        .expect("test finished in time");
    }
}

/// A lost connection drops the receive future while its disk threads are still publishing
/// a batch; the resume that starts at once must wait for them, not race their renames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_publishing_resumes_without_losing_a_file() {
    const FILES: usize = 1500;
    tokio::time::timeout(TEST_LIMIT, async {
        // The receiver hosts the rendezvous, so the sender's daemon can restart.
        let a = TestDaemon::start().await;
        let mut b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..FILES)
            .map(|i| random_file(src.path(), &format!("f{i:04}.bin"), 4096, i as u64))
            .collect();
        let (_, code) = b.send(&paths).await.expect("send");
        let recv_id = a.receive(&code).await.expect("receive");
        // Mid-stream: batches are being published when the sender's daemon goes away.
        a.wait_until(recv_id, |info| info.bytes_done >= (FILES as u64 * 4096) / 3)
            .await;
        b.stop().await;
        b.restart().await;
        let received = a.wait(recv_id).await;
        assert_eq!(
            received.state,
            JobState::Completed,
            "{:?}",
            received.failure
        );
        let saved = listing(&a.downloads);
        assert_eq!(saved.len(), FILES, "saved: {}", saved.len());
        for path in &paths {
            let name = path.file_name().unwrap();
            assert_eq!(
                std::fs::read(a.downloads.join(name)).unwrap(),
                std::fs::read(path).unwrap(),
                "{name:?}"
            );
        }
    })
    .await
    .expect("test finished in time");
}
