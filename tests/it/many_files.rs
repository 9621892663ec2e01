//! Jobs of 100 000 files on the control socket: `p2p status`, `List` and a follower's
//! frames stay small, because per-file lists travel once, in chunks (`ipc::delta`).

use std::path::Path;
use std::time::Instant;

use p2pd::ipc::codec::{MAX_FRAME_BYTES, body_len, decode, encode};
use p2pd::ipc::messages::{ClientFrame, JobState, PROTOCOL_VERSION, Request, ServerFrame, Speaker};
use p2pd::transfer::names::MAX_FILES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::cli::P2P;
use crate::support::*;

/// Sends `request` on a fresh connection and returns each reply frame with its size on
/// the wire, up to `Done`, `Jobs` or an error.
async fn raw_frames(socket: &Path, request: Request) -> Vec<(usize, ServerFrame)> {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        from: Speaker::Client,
    };
    stream.write_all(&encode(&hello).unwrap()).await.unwrap();
    stream
        .write_all(&encode(&ClientFrame::Request(request)).unwrap())
        .await
        .unwrap();
    let mut frames = Vec::new();
    loop {
        let mut header = [0u8; 4];
        stream
            .read_exact(&mut header)
            .await
            .expect("a frame, not a closed socket");
        let mut body = vec![0u8; body_len(header).unwrap()];
        stream.read_exact(&mut body).await.unwrap();
        let frame: ServerFrame = decode(&body).unwrap();
        let end = matches!(
            frame,
            ServerFrame::Done | ServerFrame::Jobs(_) | ServerFrame::Error { .. }
        );
        if !matches!(frame, ServerFrame::Hello { .. }) {
            frames.push((4 + body.len(), frame));
        }
        if end {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_two_finished_100_000_file_jobs_stays_small() {
    tokio::time::timeout(TEST_LIMIT * 2, async {
        let a = TestDaemon::start().await;
        let src = tempfile::tempdir().unwrap();
        let folder = src.path().join("many");
        // The folder counts as one entry of the offer.
        let count = MAX_FILES - 1;
        let made = Instant::now();
        let root = folder.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir(&root).unwrap();
            for i in 0..count {
                // Long names, so the lists are tens of MiB, as real paths can be.
                std::fs::File::create(root.join(format!("{i:06}-{}", "n".repeat(150)))).unwrap();
            }
        })
        .await
        .unwrap();
        eprintln!("created {count} files in {:?}", made.elapsed());

        // Two real send jobs of the folder, walked by the daemon, then cancelled: two
        // finished jobs of 100 000 entries each.
        let mut ids = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let (id, _) = a.send(std::slice::from_ref(&folder)).await.unwrap();
            eprintln!(
                "send job of {count} files created in {:?}",
                started.elapsed()
            );
            a.cancel(id).await;
            ids.push(id);
        }
        for &id in &ids {
            let started = Instant::now();
            let view = a.wait(id).await;
            assert_eq!(view.state, JobState::Cancelled);
            assert_eq!(
                view.files.len(),
                count,
                "a follower rebuilds the whole list"
            );
            let whole = postcard::to_stdvec(&view.files).unwrap().len();
            assert!(
                2 * whole > MAX_FRAME_BYTES,
                "two whole lists ({whole} bytes each) would not fit one frame"
            );
            eprintln!(
                "watch rebuilt {} files ({whole} bytes as one list) in {:?}",
                view.files.len(),
                started.elapsed()
            );
        }

        let started = Instant::now();
        let list = raw_frames(&a.socket, Request::List).await;
        let [(size, ServerFrame::Jobs(jobs))] = list.as_slice() else {
            panic!("one Jobs frame expected, got {} frames", list.len());
        };
        assert_eq!(jobs.len(), 2);
        assert!(jobs.iter().all(|j| j.files == count as u64));
        assert!(*size < 4096, "List is {size} bytes");
        eprintln!("List: one frame of {size} bytes in {:?}", started.elapsed());

        let started = Instant::now();
        let watched = raw_frames(&a.socket, Request::Watch { job: ids[0] }).await;
        let largest = watched.iter().map(|(size, _)| *size).max().unwrap();
        let total: usize = watched.iter().map(|(size, _)| *size).sum();
        assert!(largest < 1024 * 1024, "largest watch frame {largest} bytes");
        eprintln!(
            "Watch: {} frames, largest {largest} bytes, {total} in all, in {:?}",
            watched.len(),
            started.elapsed()
        );

        // The real `p2p status`, human and JSON.
        let socket = a.socket.clone();
        let outputs = tokio::task::spawn_blocking(move || {
            ["", "--json"].map(|flag| {
                let mut command = std::process::Command::new(P2P);
                command.arg("--socket").arg(&socket).arg("status");
                if !flag.is_empty() {
                    command.arg(flag);
                }
                command.output().expect("run p2p status")
            })
        })
        .await
        .unwrap();
        for output in outputs {
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let jobs: Vec<&str> = stdout
                .lines()
                .filter(|l| l.contains(&count.to_string()))
                .collect();
            assert_eq!(jobs.len(), 2, "{stdout}");
            assert!(jobs.iter().all(|l| l.contains("cancelled")), "{stdout}");
        }
    })
    .await
    .expect("test finished in time");
}
