//! The body of one job, from the rendezvous to the last verified file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::jobs::{Context, Job, signal_failure};
use super::mailbox::{self, MeetError, Target};
use super::record::{self, JobRecord, RecordStore};
use crate::devices::mailbox::DeviceMessage;
use crate::ipc::messages::{Direction, ErrorKind, Failure, JobState, PathPolicy};
use crate::rendezvous::client::RendezvousClient;
use crate::rendezvous::crypto::rejoin_channel;
use crate::rendezvous::{Code, Role, Session, SignalError};
use crate::rtc::{self, RtcError, RtcSettings};
use crate::terminal::{error_line, escape_controls};
use crate::transfer::journal::Journal;
use crate::transfer::names::Limits;
use crate::transfer::receiver::{Answer, Question};
use crate::transfer::source::Sources;
use crate::transfer::wire::Manifest;
use crate::transfer::{self, Observer, TransferError, receiver, sender};

mod error;
mod resume;

pub(super) use error::JobError;
use resume::{discard_partials, forget, resume_loop};

pub(super) async fn or_cancel<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(JobError::Cancelled),
        result = work => result,
    }
}

/// Closes a sender's connection once its last message (`done`) is acknowledged, or
/// [`crate::transfer::FLUSH_LIMIT`] passed, without holding the job: every file is
/// verified on both sides by then. On a relayed path the receiver's acknowledgement is
/// often lost as it closes, and waiting for it made the sender say completed 4.9 s after
/// the receiver (issue #29 item 11).
pub(super) fn close_after_done(connection: rtc::Connection) {
    use crate::transfer::link::Link as _;
    tokio::spawn(async move {
        connection.link.flush(crate::transfer::FLUSH_LIMIT).await;
        connection.close().await;
    });
}

pub(super) fn finish(job: &Job, result: Result<(), JobError>) {
    match result {
        Ok(()) => {
            info!("job completed");
            job.set_state(JobState::Completed);
        }
        Err(error) => {
            let failure = error.failure();
            warn!(kind = ?failure.kind, message = %failure.message, "job ended without success");
            job.fail(failure);
        }
    }
}

/// The connection's WebRTC settings: the daemon's own, plus the ICE servers the rendezvous
/// handed out with this pairing.
fn settings_for(
    context: &Context,
    path: PathPolicy,
    session: &Session,
) -> Result<RtcSettings, JobError> {
    let mut settings = RtcSettings {
        relay_only: path == PathPolicy::ForceRelay,
        ..context.config.rtc.clone()
    };
    settings
        .ice_servers
        .extend(session.ice_servers().iter().map(|s| rtc::IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        }));
    if settings.relay_only && !settings.has_relay() {
        return Err(JobError::NoRelay);
    }
    Ok(settings)
}

/// Proves the PAKE key over the channel (the first message each way), reports the route,
/// then enforces `--require-direct`, telling the peer why when it refuses.
async fn secure(
    connection: &mut rtc::Connection,
    binding_key: &[u8; 32],
    role: Role,
    path: PathPolicy,
    job: &Job,
) -> Result<(), JobError> {
    transfer::binding::authenticate(&*connection, &connection.link, binding_key, role).await?;
    check_route(connection, path, job).await
}

/// Reports the route, then enforces `--require-direct`, telling the peer why when it
/// refuses.
pub(super) async fn check_route(
    connection: &rtc::Connection,
    path: PathPolicy,
    job: &Job,
) -> Result<(), JobError> {
    let route = connection.route().await;
    job.set_route(route.clone());
    if path == PathPolicy::RequireDirect && route.is_none_or(|r| r.relayed) {
        transfer::abandon(
            &connection.link,
            "the other side requires a direct path (--require-direct)",
        )
        .await;
        return Err(JobError::RelayForbidden);
    }
    Ok(())
}

/// A receiver's answer to the offer: yes at once with `accept`, else the person's (the
/// job waits in `AwaitingApproval`, for at most `limit` if given: then it is a no); a yes
/// moves the job to `Transferring`.
pub(super) async fn approval(job: Arc<Job>, accept: bool, limit: Option<Duration>) -> bool {
    let accepted = accept || {
        let answer = job.ask();
        job.set_state(JobState::AwaitingApproval);
        // An offer from a device (paired or nearby) has no person at a terminal waiting
        // for it: tell the desktop, where there is one.
        let waiting = {
            let info = job.info.borrow();
            info.device
                .clone()
                .map(|from| (info.id, from, info.files.len(), info.bytes_total))
        };
        if let Some((id, from, files, bytes)) = waiting {
            super::desktop::offer_waiting(id, &from, files, bytes);
        }
        match limit {
            Some(limit) => matches!(tokio::time::timeout(limit, answer).await, Ok(Ok(true))),
            None => answer.await.unwrap_or(false),
        }
    };
    if accepted {
        job.set_state(JobState::Transferring);
    }
    accepted
}

/// The job's durable record, once it has one.
struct Durable {
    record: JobRecord,
    /// What the transfer reads or writes, rebuilt from the record.
    work: Work,
}

enum Work {
    Send(Sources),
    Receive(Arc<receiver::Plan>),
}

/// Runs `work`, but drops it when the daemon stops if the job is durable by then, so the
/// peer sees a lost connection (and waits for us) instead of a cancellation.
async fn unless_stopping<T>(
    context: &Context,
    job: &Job,
    durable: &AtomicBool,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => Some(result),
        _ = context.shutdown.cancelled() => {
            if durable.load(Ordering::SeqCst) {
                info!("daemon stopping: the job will resume when it starts again");
                return None;
            }
            job.cancel.cancel();
            Some(work.await)
        }
    }
}

/// A connection's transfer, ended early as "peer gone" if the connection is lost.
pub(super) async fn until_lost<T>(
    connection: &rtc::Connection,
    transfer: impl Future<Output = Result<T, TransferError>>,
) -> Result<T, TransferError> {
    tokio::select! {
        result = transfer => result,
        _ = connection.lost() => Err(TransferError::PeerGone),
    }
}

/// How a sender meets its receiver.
pub enum SendMeeting {
    /// At the nameplate it allocated, with the code its person passes on.
    Code {
        client: Box<RendezvousClient>,
        code: Code,
    },
    /// At a paired device's mailbox (`--to NAME`).
    Device(Target),
}

/// How a receiver meets its sender.
pub enum ReceiveMeeting {
    /// By claiming the code's nameplate.
    Code(Code),
    /// A paired device met at this daemon's mailbox, its session open and proven.
    Met(Box<Session>),
}

pub async fn run_send(
    job: Arc<Job>,
    context: Arc<Context>,
    meeting: SendMeeting,
    (sources, text): (Sources, Option<String>),
    path: PathPolicy,
) {
    let cancel = job.cancel.clone();
    // A send waiting for a device is kept (`outbox`) from the moment it was recorded, not
    // from when this task first runs: a daemon stopping before then must leave it to the
    // next start, not cancel it (the restart test lost it under load, issue #29).
    let durable = AtomicBool::new(matches!(meeting, SendMeeting::Device(_)));
    let mut record = None;
    let work = async {
        let session = match meeting {
            SendMeeting::Code { mut client, code } => {
                // A lost rendezvous connection is replaced, in the same nameplate.
                let instances = &context.rendezvous_url;
                or_cancel(&cancel, async {
                    Ok(instances.wait_for_peer(&mut client).await?)
                })
                .await?;
                job.set_state(JobState::Negotiating);
                or_cancel(&cancel, async {
                    Ok(Session::establish(*client, Role::Sender, &code).await?)
                })
                .await?
            }
            SendMeeting::Device(target) => {
                // Waiting for the device is kept (`outbox`): a daemon stopping now leaves
                // the send to its next start instead of cancelling it.
                let met = or_cancel(&cancel, async {
                    let meeting = mailbox::meet(&context, &target, DeviceMessage::Transfer);
                    tokio::pin!(meeting);
                    // An online device is met within a probe's time: only a device not met
                    // by then is "waiting to come online" (issue #29: it was said at once).
                    let first = tokio::time::timeout(mailbox::PROBE_LIMIT, &mut meeting).await;
                    let met = match first {
                        Ok(met) => met,
                        Err(_) => {
                            job.set_state(JobState::WaitingForPeer);
                            meeting.await
                        }
                    };
                    met.map_err(JobError::Meet)
                })
                .await;
                durable.store(false, Ordering::SeqCst);
                let (dir, id) = (context.config.state_dir.clone(), job.info.borrow().id);
                let _ = tokio::task::spawn_blocking(move || super::outbox::remove(&dir, id)).await;
                let met = met?;
                job.met_device();
                job.set_state(JobState::Negotiating);
                met
            }
        };
        let binding_key = session.binding_key();
        let secret = session.resume_secret();
        let settings = settings_for(&context, path, &session)?;
        let mut connection = rtc::connect_offerer(session, &settings, &cancel).await?;
        if let Err(error) = secure(&mut connection, &binding_key, Role::Sender, path, &job).await {
            connection.close().await;
            return Err(error);
        }
        // A message instead of files: nothing to ask, record or resume.
        if let Some(text) = &text {
            let result = until_lost(
                &connection,
                sender::send_text(&connection.link, text, &cancel),
            )
            .await;
            connection.close().await;
            return Ok(result?);
        }
        // The receiver's person may take a while to answer: say so, and keep that time
        // out of the transfer's rate.
        job.set_state(JobState::AwaitingApproval);
        let mut fresh =
            JobRecord::new(Direction::Send, &secret, context.config.resume_window, path);
        fresh.job_id = Some(job.info.borrow().id);
        fresh.manifest = sources.manifest.clone();
        fresh.sources = sources.paths.clone();
        fresh.source_ids = sources.ids.clone();
        let accepted = async {
            // Three fsyncs: off the workers that drive the peer connections.
            let (records, copy) = (context.records.clone(), fresh.clone());
            tokio::task::spawn_blocking(move || records.save(&copy))
                .await
                .map_err(|_| TransferError::Protocol("recording the job stopped".into()))?
                .map_err(|e| TransferError::Io {
                    context: "cannot record the job".into(),
                    place: None,
                    source: e,
                })?;
            durable.store(true, Ordering::SeqCst);
            job.set_state(JobState::Transferring);
            Ok(())
        };
        let result = until_lost(
            &connection,
            sender::send(&connection.link, &sources, job.as_ref(), accepted, &cancel),
        )
        .await;
        if durable.load(Ordering::SeqCst) {
            record = Some(fresh.clone());
        }
        match result {
            Ok(()) => close_after_done(connection),
            Err(_) => connection.close().await,
        }
        Ok(result?)
    };
    let Some(result) = unless_stopping(&context, &job, &durable, work).await else {
        return;
    };
    match (result, record) {
        (Err(error), Some(record)) if error.resumable() => {
            let durable = Durable {
                record,
                work: Work::Send(sources),
            };
            resume_loop(job, context, durable, error.interruption()).await;
        }
        (result, record) => {
            if let Some(record) = record {
                forget(&context, &record.id).await;
            }
            finish(&job, result);
        }
    }
}

pub async fn run_receive(
    job: Arc<Job>,
    context: Arc<Context>,
    meeting: ReceiveMeeting,
    (dir, limits): (PathBuf, Limits),
    accept: bool,
    path: PathPolicy,
) {
    let cancel = job.cancel.clone();
    let durable = Arc::new(AtomicBool::new(false));
    let mut kept = None;
    let work = async {
        let session = match meeting {
            ReceiveMeeting::Code(code) => {
                or_cancel(&cancel, async {
                    let mut client = context.rendezvous_url.connect().await?;
                    match client.claim(code.nameplate).await {
                        Ok(()) => {
                            job.set_state(JobState::Negotiating);
                            Ok(Session::establish(client, Role::Receiver, &code).await?)
                        }
                        // Two daemons with default settings each have a rendezvous of their
                        // own: the sender's may be on the LAN (issue #29).
                        Err(SignalError::UnknownCode) => {
                            client.close().await;
                            let relay = super::nearby::code::ask_the_lan(&context, code.nameplate)
                                .await
                                .ok_or_else(|| JobError::CodeNowhere {
                                    rendezvous: context.rendezvous_url.url().to_owned(),
                                })?;
                            job.set_state(JobState::Negotiating);
                            Ok(
                                Session::establish_over(Box::new(relay), Role::Receiver, &code)
                                    .await?,
                            )
                        }
                        Err(other) => Err(other.into()),
                    }
                })
                .await?
            }
            ReceiveMeeting::Met(session) => *session,
        };
        let binding_key = session.binding_key();
        let secret = session.resume_secret();
        let settings = settings_for(&context, path, &session)?;
        let mut connection = rtc::connect_answerer(session, &settings, &cancel).await?;
        if let Err(error) = secure(&mut connection, &binding_key, Role::Receiver, path, &job).await
        {
            connection.close().await;
            return Err(error);
        }
        let asked = job.clone();
        let approve = move |question| async move {
            match question {
                Question::Offer => Answer::from_yes(approval(asked, accept, None).await),
                // A paired device whose rule is ask: its message waits in the inbox like
                // an offer, and is shown once accepted (issue #23). Otherwise the channel
                // proof showed that the code's holder, or the paired device, sends it.
                Question::Message => {
                    let from_device = asked.info.borrow().device.is_some();
                    Answer::from_yes(!from_device || approval(asked, accept, None).await)
                }
            }
        };
        let mut fresh = JobRecord::new(
            Direction::Receive,
            &secret,
            context.config.resume_window,
            path,
        );
        fresh.dir = Some(dir.clone());
        fresh.job_id = Some(job.info.borrow().id);
        fresh.tag = Some(record::random_hex(4));
        let journal = Arc::new(ReceiveJournal {
            records: context.records.clone(),
            record: Mutex::new(fresh.clone()),
            dir: context.records.job_dir(&fresh.id),
            durable: durable.clone(),
        });
        let plan = Arc::new(receiver::Plan {
            dir: dir.clone(),
            limits,
            messages: true,
            tag: fresh.tag.clone().unwrap_or_default(),
            journal: Some(journal.clone()),
            disk: Default::default(),
            space: context.space.clone(),
        });
        let result = until_lost(
            &connection,
            receiver::receive(&connection.link, &plan, job.as_ref(), approve, &cancel),
        )
        .await;
        if durable.load(Ordering::SeqCst) {
            kept = Some((journal.snapshot(), plan));
        }
        connection.close().await;
        result.map(|_| ()).map_err(JobError::from)
    };
    let Some(result) = unless_stopping(&context, &job, &durable, work).await else {
        return;
    };
    match (result, kept) {
        (Err(error), Some((record, plan))) if error.resumable() => {
            let durable = Durable {
                record,
                work: Work::Receive(plan),
            };
            resume_loop(job, context, durable, error.interruption()).await;
        }
        (result, kept) => {
            if let Some((record, plan)) = kept {
                if result.is_err() {
                    discard_partials(&record, &plan).await;
                }
                forget(&context, &record.id).await;
            }
            finish(&job, result);
        }
    }
}

/// Picks up a durable job found in the state directory when the daemon starts.
pub async fn run_restored(job: Arc<Job>, context: Arc<Context>, record: JobRecord) {
    let work = match record.direction {
        Direction::Send => Work::Send(Sources {
            manifest: record.manifest.clone(),
            paths: record.sources.clone(),
            ids: record.source_ids.clone(),
        }),
        Direction::Receive => {
            let journal = Arc::new(ReceiveJournal {
                records: context.records.clone(),
                record: Mutex::new(record.clone()),
                dir: context.records.job_dir(&record.id),
                durable: Arc::new(AtomicBool::new(true)),
            });
            Work::Receive(Arc::new(receiver::Plan {
                dir: record.dir.clone().unwrap_or_default(),
                limits: context.config.limits,
                messages: true,
                tag: record.tag.clone().unwrap_or_default(),
                journal: Some(journal),
                disk: Default::default(),
                space: context.space.clone(),
            }))
        }
    };
    job.offered(&record.manifest);
    let durable = Durable { record, work };
    resume_loop(job, context, durable, "p2pd restarted".to_owned()).await;
}

/// The receiving side's journal: the record is written when the offer is accepted.
struct ReceiveJournal {
    records: RecordStore,
    record: Mutex<JobRecord>,
    dir: PathBuf,
    durable: Arc<AtomicBool>,
}

impl ReceiveJournal {
    fn snapshot(&self) -> JobRecord {
        lock(&self.record).clone()
    }
}

impl Journal for ReceiveJournal {
    fn accepted(&self, manifest: &Manifest) -> std::io::Result<()> {
        let mut record = lock(&self.record);
        record.manifest = manifest.clone();
        self.records.save(&record)?;
        self.durable.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that waits to resume does so by itself: its reason names the cause and gives
    /// no advice that would send the user off to start it again.
    #[test]
    fn an_interruption_names_its_cause_and_asks_nothing() {
        let interruptions = [
            JobError::Transfer(TransferError::PeerGone),
            JobError::Rtc(RtcError::NoRoute),
            JobError::Rtc(RtcError::ChannelClosed),
            JobError::Signal(SignalError::PeerGone),
        ];
        for error in interruptions {
            assert!(error.resumable());
            let reason = error.interruption();
            assert!(
                !reason.contains("again") && !reason.contains(':'),
                "{reason}"
            );
        }
    }
}
