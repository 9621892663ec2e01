//! One CLI connection: the version handshake, then requests, with job updates streamed to
//! clients that follow a job. A client leaving never stops a job.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::jobs::Jobs;
use crate::ipc::codec::{CodecError, read_frame_within, write_frame};
use crate::ipc::delta::Sent;

/// A new client must say hello within this.
pub(crate) const HELLO_LIMIT: Duration = Duration::from_secs(5);
/// Fastest rate at which a following client gets job updates.
const UPDATE_INTERVAL: Duration = Duration::from_millis(100);
/// Any frame, once started, must arrive whole within this.
pub(crate) const FRAME_LIMIT: Duration = Duration::from_secs(10);
use crate::ipc::messages::{
    ClientFrame, ErrorKind, Failure, JobId, PROTOCOL_VERSION, Request, ServerFrame, Speaker,
};

/// Tells a client of another version ours, so it can say which side to upgrade.
async fn write_version(stream: &mut UnixStream) -> Result<(), CodecError> {
    let ours = ServerFrame::Hello {
        version: PROTOCOL_VERSION,
        from: Speaker::Daemon,
    };
    write_frame(stream, &ours).await
}

pub async fn serve(
    mut stream: UnixStream,
    jobs: Arc<Jobs>,
    shutdown: CancellationToken,
) -> Result<(), CodecError> {
    let hello = read_frame_within::<ClientFrame, _>(&mut stream, Some(HELLO_LIMIT), FRAME_LIMIT);
    match hello.await {
        Ok(Some(ClientFrame::Hello {
            version,
            from: Speaker::Client,
        })) if version == PROTOCOL_VERSION => {}
        // Another version's hello may not even decode as ours (version 8's had no
        // `from`); either way its first field is its version, and it reads ours the same.
        Ok(Some(ClientFrame::Hello { version, .. })) if version != PROTOCOL_VERSION => {
            return write_version(&mut stream).await;
        }
        Err(CodecError::Malformed(_)) => return write_version(&mut stream).await,
        Err(error) => return Err(error),
        Ok(_) => {
            let error = ServerFrame::Error {
                kind: ErrorKind::Version,
                message: "expected a hello".into(),
            };
            return write_frame(&mut stream, &error).await;
        }
    }
    write_version(&mut stream).await?;
    let mut spools = super::spool::Pending::new(&jobs.context.config.state_dir);

    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            // Idle between requests is fine (a watcher may wait hours); a half-sent frame is not.
            frame = read_frame_within::<ClientFrame, _>(&mut stream, None, FRAME_LIMIT) => match frame? {
                Some(ClientFrame::Request(request)) => request,
                Some(ClientFrame::Hello { .. }) => continue,
                None => return Ok(()),
            },
        };
        // Never the request itself: a receive request carries the code.
        debug!(request = request.name(), "request");
        match request {
            Request::Send {
                paths,
                follow,
                path,
                words,
                text,
                manual,
                to,
            } => {
                let spooled = spools.take(&paths);
                let created = jobs
                    .start_send(paths, path, words, text, (manual, to))
                    .await;
                if let Some(dir) = spooled {
                    match created.as_ref().ok().and_then(|info| jobs.get(info.id)) {
                        Some(job) => super::spool::own(job, dir),
                        // Refused: nothing will read it, so it goes with the connection.
                        None => spools.adopt(dir),
                    }
                }
                reply_created(&mut stream, &jobs, created, follow, &shutdown).await?;
            }
            Request::Receive {
                code,
                download_dir,
                accept,
                follow,
                path,
            } => {
                let created = jobs.start_receive(&code, download_dir, accept, path).await;
                reply_created(&mut stream, &jobs, created, follow, &shutdown).await?;
            }
            Request::ReceiveManual {
                offer,
                download_dir,
                accept,
                follow,
                path,
            } => {
                let created = jobs
                    .start_receive_manual(&offer, download_dir, accept, path)
                    .await;
                reply_created(&mut stream, &jobs, created, follow, &shutdown).await?;
            }
            Request::Answer { job, answer } => {
                write_frame(&mut stream, &done_or_error(jobs.answer(job, answer))).await?
            }
            Request::List => write_frame(&mut stream, &ServerFrame::Jobs(jobs.list())).await?,
            Request::Watch { job } => match jobs.find(job) {
                Ok(_) => follow_job(&mut stream, &jobs, job, &shutdown).await?,
                Err(failure) => write_frame(&mut stream, &error_frame(failure)).await?,
            },
            Request::Cancel { job } => {
                write_frame(&mut stream, &done_or_error(jobs.cancel(job))).await?
            }
            Request::Decide { job, accept } => {
                write_frame(&mut stream, &done_or_error(jobs.decide(job, accept))).await?
            }
            Request::Page => {
                let (url, this_machine_only) = page_of(jobs.context.rendezvous_url.url());
                let frame = ServerFrame::Page {
                    url,
                    this_machine_only,
                };
                write_frame(&mut stream, &frame).await?
            }
            Request::Spool => {
                let frame = match spools.make() {
                    Ok(dir) => ServerFrame::Spool { dir },
                    Err(error) => error_frame(Failure {
                        kind: ErrorKind::Io,
                        message: format!(
                            "cannot make room for stdin in the state directory {}: {error}",
                            crate::terminal::escape_path(&jobs.context.config.state_dir)
                        ),
                    }),
                };
                write_frame(&mut stream, &frame).await?
            }
            Request::Identity => {
                let context = &jobs.context;
                let frame = ServerFrame::Identity {
                    name: crate::terminal::escape_controls(&context.config.device_name),
                    fingerprint: context.identity.fingerprint(),
                };
                write_frame(&mut stream, &frame).await?
            }
            Request::Devices => {
                let frame = super::devices::list(&jobs).await;
                write_frame(&mut stream, &frame).await?
            }
            Request::Nearby => {
                let frame = match &jobs.context.lan {
                    Some(lan) => ServerFrame::Nearby {
                        enabled: true,
                        devices: lan
                            .nearby()
                            .into_iter()
                            .map(|n| crate::ipc::messages::NearbyInfo {
                                name: crate::terminal::escape_controls(&n.name),
                                id: n.id,
                                addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
                            })
                            .collect(),
                    },
                    None => ServerFrame::Nearby {
                        enabled: false,
                        devices: Vec::new(),
                    },
                };
                write_frame(&mut stream, &frame).await?
            }
            Request::Unpair { name } => {
                let frame = super::devices::unpair(&jobs, name).await;
                write_frame(&mut stream, &frame).await?
            }
            Request::Rule {
                name,
                rule,
                max_files,
                max_bytes,
            } => {
                let frame = super::devices::rule(&jobs, name, rule, max_files, max_bytes).await;
                write_frame(&mut stream, &frame).await?
            }
            Request::Pair { code } => {
                let paired = super::pairing::pair(&mut stream, &jobs.context, code).await;
                // A new pairing gets its mailbox at once, whatever became of the client.
                super::mailbox::sync(&jobs);
                paired?
            }
            Request::Confirm { .. } => {
                let frame = ServerFrame::Error {
                    kind: ErrorKind::BadRequest,
                    message: "nothing is waiting for a confirmation on this connection".into(),
                };
                write_frame(&mut stream, &frame).await?
            }
            Request::Clear => {
                let cleared = jobs.clear().await as u64;
                write_frame(&mut stream, &ServerFrame::Cleared { jobs: cleared }).await?
            }
        }
    }
}

async fn reply_created(
    stream: &mut UnixStream,
    jobs: &Jobs,
    created: Result<crate::ipc::messages::JobInfo, Failure>,
    follow: bool,
    shutdown: &CancellationToken,
) -> Result<(), CodecError> {
    match created {
        Ok(info) => {
            let id = info.id;
            write_frame(stream, &ServerFrame::Created(info.summary())).await?;
            if follow {
                follow_job(stream, jobs, id, shutdown).await?;
            }
            Ok(())
        }
        Err(failure) => write_frame(stream, &error_frame(failure)).await,
    }
}

/// Streams every change of job `id` until it is final, then `Done`.
async fn follow_job(
    stream: &mut UnixStream,
    jobs: &Jobs,
    id: JobId,
    shutdown: &CancellationToken,
) -> Result<(), CodecError> {
    let Some(job) = jobs.get(id) else {
        return Ok(());
    };
    let mut updates = job.info.subscribe();
    let mut sent = Sent::default();
    loop {
        // Built under the watch's lock, which is not held across a write: only what
        // changed is copied out, however many files the job has.
        let (frames, last) = {
            let info = updates.borrow_and_update();
            (sent.frames(&info), info.state.is_final())
        };
        for frame in &frames {
            write_frame(stream, frame).await?;
        }
        if last {
            return write_frame(stream, &ServerFrame::Done).await;
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() {
                return Ok(());
            },
            // A durable job does not end when the daemon stops; its watchers do.
            _ = shutdown.cancelled() => {
                let stopping = ServerFrame::Error {
                    kind: ErrorKind::ShuttingDown,
                    message: "p2pd stopped; the job resumes when it starts again".into(),
                };
                return write_frame(stream, &stopping).await;
            }
        }
        // A job of thousands of small files changes thousands of times a second; the
        // watch keeps only the latest state, so pausing here coalesces without loss.
        if !updates.borrow().state.is_final() {
            tokio::time::sleep(UPDATE_INTERVAL).await;
        }
    }
}

/// The browser page of the rendezvous at `rendezvous` (`ws://` or `wss://`), served on
/// the same address, and whether that address is a loopback one.
fn page_of(rendezvous: &str) -> (String, bool) {
    let (scheme, rest) = match rendezvous.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("http", rendezvous),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (format!("{scheme}://{authority}/"), loopback)
}

fn error_frame(failure: Failure) -> ServerFrame {
    ServerFrame::Error {
        kind: failure.kind,
        message: failure.message,
    }
}

fn done_or_error(result: Result<(), Failure>) -> ServerFrame {
    match result {
        Ok(()) => ServerFrame::Done,
        Err(failure) => error_frame(failure),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_served_where_the_rendezvous_is() {
        assert_eq!(
            super::page_of("wss://rv.example.org:9009"),
            ("https://rv.example.org:9009/".to_owned(), false)
        );
        assert_eq!(
            super::page_of("ws://127.0.0.1:41234"),
            ("http://127.0.0.1:41234/".to_owned(), true)
        );
        assert!(super::page_of("ws://[::1]:80/").1);
        assert!(!super::page_of("ws://192.168.1.5:9009").1);
    }
}
