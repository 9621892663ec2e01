//! Successful transfers: sizes around the chunk boundaries, several files, concurrency.

use std::path::PathBuf;

use p2pd::ipc::messages::JobState;

use crate::support::*;

/// Sizes around the 16 KiB (classic SCTP message) boundary, and larger.
const SIZES: &[usize] = &[
    0,
    1,
    16 * 1024 - 1,
    16 * 1024,
    16 * 1024 + 1,
    1024 * 1024,
    64 * 1024 * 1024,
];

async fn round_trip(sender: &TestDaemon, receiver: &TestDaemon, sources: &[PathBuf]) {
    let (send_id, code) = sender.send(sources).await.expect("send accepted");
    let receive_id = receiver.receive(&code).await.expect("receive accepted");
    let received = receiver.wait(receive_id).await;
    let sent = sender.wait(send_id).await;
    assert_eq!(
        received.state,
        JobState::Completed,
        "{:?}",
        received.failure
    );
    assert_eq!(sent.state, JobState::Completed, "{:?}", sent.failure);
    assert_eq!(sent.bytes_done, sent.bytes_total);
    for info in [&sent, &received] {
        let route = info.route.as_ref().expect("the route is reported");
        assert!(!route.relayed, "loopback is direct: {route:?}");
        // The far side may be peer-reflexive: its check can beat its trickled candidate.
        assert!(
            route.description.starts_with("direct (host ↔ "),
            "{route:?}"
        );
    }
    for (source, file) in sources.iter().zip(&received.files) {
        let saved = file.saved_as.as_ref().expect("saved path");
        assert!(file.verified);
        assert_eq!(saved.parent(), Some(receiver.downloads.as_path()));
        assert_eq!(
            std::fs::read(saved).unwrap(),
            std::fs::read(source).unwrap(),
            "{}",
            source.display()
        );
        assert_eq!(sha256_file(saved), sha256_file(source));
    }
    assert_no_partials(&receiver.downloads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_round_trip_between_two_daemons() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        for (i, size) in SIZES.iter().enumerate() {
            let path = random_file(src.path(), &format!("file-{size}.bin"), *size, i as u64);
            round_trip(&a, &b, &[path]).await;
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_sends_to_itself() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let src = tempfile::tempdir().unwrap();
        for (i, size) in [0usize, 16 * 1024 + 1, 1024 * 1024].iter().enumerate() {
            let path = random_file(
                src.path(),
                &format!("self-{size}.bin"),
                *size,
                100 + i as u64,
            );
            round_trip(&a, &a, &[path]).await;
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_files_in_one_transfer() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let files = vec![
            random_file(src.path(), "one.bin", 100_000, 1),
            random_file(src.path(), "two words.txt", 0, 2),
            random_file(src.path(), "drei-ü.dat", 3 * 65536 + 7, 3),
        ];
        round_trip(&a, &b, &files).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_transfers_at_once_all_verify() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let mut jobs = Vec::new();
        for i in 0..4 {
            let path = random_file(
                src.path(),
                &format!("parallel-{i}.bin"),
                8 * 1024 * 1024 + i,
                40 + i as u64,
            );
            let (send_id, code) = a.send(std::slice::from_ref(&path)).await.unwrap();
            let receive_id = b.receive(&code).await.unwrap();
            jobs.push((path, send_id, receive_id));
        }
        for (path, send_id, receive_id) in jobs {
            let received = b.wait(receive_id).await;
            assert_eq!(
                received.state,
                JobState::Completed,
                "{:?}",
                received.failure
            );
            assert_eq!(a.wait(send_id).await.state, JobState::Completed);
            let saved = received.files[0].saved_as.clone().unwrap();
            assert_eq!(sha256_file(&saved), sha256_file(&path));
        }
        assert_no_partials(&b.downloads);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_collision_gets_a_free_name_and_keeps_the_old_file() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        std::fs::write(b.downloads.join("report.pdf"), b"precious").unwrap();
        let path = random_file(src.path(), "report.pdf", 5000, 7);
        let (send_id, code) = a.send(std::slice::from_ref(&path)).await.unwrap();
        let received = b.wait(b.receive(&code).await.unwrap()).await;
        assert_eq!(received.state, JobState::Completed);
        assert_eq!(a.wait(send_id).await.state, JobState::Completed);
        assert_eq!(
            std::fs::read(b.downloads.join("report.pdf")).unwrap(),
            b"precious"
        );
        assert_eq!(
            received.files[0].saved_as.as_deref(),
            Some(b.downloads.join("report (1).pdf").as_path())
        );
        assert_eq!(
            sha256_file(&b.downloads.join("report (1).pdf")),
            sha256_file(&path)
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_into_another_directory() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = random_file(src.path(), "x.bin", 1234, 9);
        let (_, code) = a.send(std::slice::from_ref(&path)).await.unwrap();
        let received = a
            .wait(a.receive_into(&code, Some(out.path())).await.unwrap())
            .await;
        assert_eq!(received.state, JobState::Completed);
        assert_eq!(
            std::fs::read(out.path().join("x.bin")).unwrap(),
            std::fs::read(&path).unwrap()
        );
        assert!(listing(&a.downloads).is_empty());
    })
    .await
    .expect("test finished in time");
}

/// What a received tree must reproduce: every path with its kind, size, bytes, time and
/// executable bit.
fn snapshot(root: &std::path::Path) -> Vec<(String, String, u64, i64, bool, Vec<u8>)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let (kind, bytes) = if meta.is_dir() {
                stack.push(path.clone());
                ("dir", Vec::new())
            } else if meta.is_file() {
                ("file", std::fs::read(&path).unwrap())
            } else {
                ("other", Vec::new())
            };
            let exec = meta.is_file() && meta.permissions().mode() & 0o100 != 0;
            let size = if meta.is_file() { meta.len() } else { 0 };
            out.push((rel, kind.to_owned(), size, meta.mtime(), exec, bytes));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_round_trip_with_times_and_the_executable_bit() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};
    tokio::time::timeout(TEST_LIMIT, async {
        let a = TestDaemon::start().await;
        let b = a.peer().await;
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("Projekt ünï 数据");
        std::fs::create_dir_all(tree.join("deep/er/still")).unwrap();
        std::fs::create_dir_all(tree.join("empty folder")).unwrap();
        random_file(
            &tree.join("deep/er/still"),
            "data file.bin",
            3 * 1024 * 1024 + 7,
            1,
        );
        random_file(&tree.join("deep"), "zero", 0, 2);
        let script = random_file(&tree, "run me.sh", 100, 3);
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.join("escape")).unwrap();
        // Distinct old times on every file and folder, set deepest first.
        let mut when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        for path in [
            "deep/er/still/data file.bin",
            "deep/zero",
            "run me.sh",
            "deep/er/still",
            "deep/er",
            "deep",
            "empty folder",
            "",
        ] {
            when += Duration::from_secs(3600);
            let handle = std::fs::File::open(tree.join(path)).unwrap();
            handle.set_modified(when).unwrap();
        }
        let single = random_file(src.path(), "alone.txt", 10, 4);

        let (send_id, code) = a.send(&[tree.clone(), single.clone()]).await.unwrap();
        let receive_id = b.receive(&code).await.unwrap();
        let received = b.wait(receive_id).await;
        assert_eq!(
            received.state,
            JobState::Completed,
            "{:?}",
            received.failure
        );
        let sent = a.wait(send_id).await;
        assert_eq!(sent.state, JobState::Completed);
        assert_eq!(sent.skipped, vec!["Projekt ünï 数据/escape".to_owned()]);
        assert_eq!(received.skipped, sent.skipped, "the receiver is told");
        assert_eq!(
            received.saved_folders,
            vec![b.downloads.join("Projekt ünï 数据")],
            "the receiver learns where the folder went"
        );

        let got = b.downloads.join("Projekt ünï 数据");
        let mut expected = snapshot(&tree);
        expected.retain(|(path, ..)| path != "escape");
        assert_eq!(snapshot(&got), expected);
        let top_time = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(top_time(&got), top_time(&tree), "the folder keeps its time");
        assert_eq!(
            std::fs::read(b.downloads.join("alone.txt")).unwrap(),
            std::fs::read(&single).unwrap()
        );
        assert_no_partials(&b.downloads);

        // The same folder again lands beside the first under a free name.
        let (_, code) = a.send(std::slice::from_ref(&tree)).await.unwrap();
        let again = b.receive(&code).await.unwrap();
        assert_eq!(b.wait(again).await.state, JobState::Completed);
        assert_eq!(
            snapshot(&b.downloads.join("Projekt ünï 数据 (1)")),
            expected
        );
        assert_eq!(snapshot(&got), expected, "the first copy is untouched");
    })
    .await
    .expect("test finished in time");
}
