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

pub(super) enum JobError {
    Signal(SignalError),
    Rtc(RtcError),
    Transfer(TransferError),
    /// `--require-direct`, and the only path was relayed.
    RelayForbidden,
    /// `--force-relay`, and neither the config nor the rendezvous gave a TURN server.
    NoRelay,
    /// `--manual`: no answer was pasted in time.
    NoAnswer,
    /// `--manual`: the sender's person did not confirm the authentication string.
    NotConfirmed,
    /// `--to NAME`: the paired device was not met, or did not prove itself.
    Meet(MeetError),
    /// `--nearby NAME`: the nearby daemon did not answer the offer.
    Nearby(super::nearby::NearbyError),
    /// A code neither this daemon's rendezvous nor any daemon on the LAN knows.
    CodeNowhere {
        rendezvous: String,
    },
    Cancelled,
}

impl From<SignalError> for JobError {
    fn from(e: SignalError) -> Self {
        JobError::Signal(e)
    }
}
impl From<RtcError> for JobError {
    fn from(e: RtcError) -> Self {
        match e {
            RtcError::Cancelled => JobError::Cancelled,
            other => JobError::Rtc(other),
        }
    }
}
impl From<TransferError> for JobError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Cancelled => JobError::Cancelled,
            other => JobError::Transfer(other),
        }
    }
}

impl JobError {
    fn failure(&self) -> Failure {
        let (kind, message) = match self {
            JobError::Signal(e) => return signal_failure(e),
            JobError::Rtc(e) => (
                match e {
                    RtcError::NoRoute => ErrorKind::NoRoute,
                    RtcError::Handshake => ErrorKind::Protocol,
                    RtcError::HandshakeStalled => ErrorKind::Protocol,
                    RtcError::TooManyCandidates(_) => ErrorKind::Protocol,
                    RtcError::Refused(_) => ErrorKind::Declined,
                    RtcError::Signaling(s) => return signal_failure(s),
                    _ => ErrorKind::PeerGone,
                },
                error_line(e),
            ),
            JobError::Transfer(e) => (
                match e {
                    TransferError::Declined | TransferError::Rejected(_) => ErrorKind::Declined,
                    TransferError::PeerCancelled(_) | TransferError::PeerGone => {
                        ErrorKind::PeerGone
                    }
                    TransferError::VerificationFailed(_) => ErrorKind::VerificationFailed,
                    TransferError::ReceiverFailed { mismatch: true, .. } => {
                        ErrorKind::VerificationFailed
                    }
                    TransferError::Protocol(_)
                    | TransferError::BadOffer(_)
                    | TransferError::Unauthenticated
                    | TransferError::SasBroken => ErrorKind::Protocol,
                    _ => ErrorKind::Io,
                },
                error_line(e),
            ),
            JobError::CodeNowhere { rendezvous } => (
                ErrorKind::UnknownCode,
                format!(
                    "no transfer is waiting for that code at the rendezvous {} nor on this LAN: check it, or ask the sender for a new one; if it is right, the sender uses another rendezvous, and both sides must use one (rendezvous = \"wss://…\" in both daemons' config, or p2pd rendezvous on a host both reach)",
                    escape_controls(rendezvous)
                ),
            ),
            JobError::Cancelled => (
                ErrorKind::Cancelled,
                "cancelled on this side (p2p cancel or Ctrl-C)".to_owned(),
            ),
            JobError::NoRelay => (
                ErrorKind::NoRoute,
                "--force-relay needs a TURN server: neither the daemon's config nor the rendezvous provides one".to_owned(),
            ),
            JobError::NoAnswer => (
                ErrorKind::Expired,
                format!(
                    "no answer was pasted within {} minutes: run p2p send --manual again",
                    super::manual::ANSWER_WAIT.as_secs() / 60
                ),
            ),
            JobError::Meet(MeetError::Signal(e)) => return signal_failure(e),
            JobError::Meet(e) => (
                match e {
                    MeetError::Offline(..) => ErrorKind::PeerGone,
                    MeetError::Unpaired(_) => ErrorKind::NotFound,
                    MeetError::Refused(_) => ErrorKind::Declined,
                    _ => ErrorKind::Protocol,
                },
                error_line(e),
            ),
            JobError::Nearby(e) => (
                match e {
                    super::nearby::NearbyError::Refused(_) => ErrorKind::Declined,
                    _ => ErrorKind::PeerGone,
                },
                error_line(e),
            ),
            JobError::NotConfirmed => (
                ErrorKind::Declined,
                "nothing was sent: the authentication strings were not confirmed to be the same (if they differ, someone is in between)".to_owned(),
            ),
            JobError::RelayForbidden => (
                ErrorKind::NoRoute,
                "the only path found goes through a relay, and --require-direct forbids it: retry without it, or from networks with a direct path".to_owned(),
            ),
        };
        Failure { kind, message }
    }
}

pub(super) async fn or_cancel<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(JobError::Cancelled),
        result = work => result,
    }
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

impl JobError {
    /// Why a durable job is waiting to resume: a cause only, since the daemon retries by
    /// itself and the user has nothing to do (an error's own advice, "run the transfer
    /// again", would say otherwise).
    fn interruption(&self) -> String {
        match self {
            JobError::Signal(_) => "the rendezvous cannot be reached",
            JobError::Rtc(RtcError::NoRoute) => "no network path to the other side",
            _ => "the connection to the other side was lost",
        }
        .to_owned()
    }

    /// Lost connections and an unreachable rendezvous are worth another try; anything the
    /// peer or the data said is final.
    fn resumable(&self) -> bool {
        match self {
            JobError::Signal(_) => true,
            JobError::Rtc(e) => !matches!(e, RtcError::Cancelled),
            JobError::Transfer(e) => receiver::resumable(e),
            JobError::RelayForbidden
            | JobError::NoRelay
            | JobError::NoAnswer
            | JobError::NotConfirmed
            | JobError::Meet(_)
            | JobError::Nearby(_)
            | JobError::CodeNowhere { .. }
            | JobError::Cancelled => false,
        }
    }
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
                or_cancel(&cancel, async { Ok(client.wait_for_peer().await?) }).await?;
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
        connection.close().await;
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

/// Longest pause between two attempts to reach the other side again (a waiting attempt
/// itself sits on the rendezvous, so this only spaces out quick failures).
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(15);
const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Keeps trying to reach the other side through the rendezvous and continue, until the
/// job completes, fails for good, is cancelled, or its resume window closes.
async fn resume_loop(
    job: Arc<Job>,
    context: Arc<Context>,
    mut durable: Durable,
    mut reason: String,
) {
    let cancel = job.cancel.clone();
    let never = AtomicBool::new(true);
    let mut pause = FIRST_RETRY_PAUSE;
    // The window counts from the latest interruption (a restart is one).
    restart_window(&context, &mut durable.record).await;
    loop {
        if durable.record.expired() {
            let window = context.config.resume_window.as_secs();
            let window = if window >= 3600 {
                format!("{:.1} h", window as f64 / 3600.0)
            } else {
                format!("{window} s")
            };
            warn!("resume window closed");
            job.fail(Failure {
                kind: ErrorKind::PeerGone,
                message: format!(
                    "the other side did not come back within the resume window ({window}): send again"
                ),
            });
            end_for_good(&context, &durable).await;
            return;
        }
        job.wait_to_resume(&reason, durable.record.deadline_unix);
        info!(%reason, "waiting to resume");
        let remaining = Duration::from_secs(
            durable
                .record
                .deadline_unix
                .saturating_sub(record::unix_now()),
        );
        let attempt = async {
            match tokio::time::timeout(
                remaining,
                or_cancel(&cancel, attempt(&job, &context, &durable)),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(JobError::Signal(SignalError::Expired)),
            }
        };
        let Some(result) = unless_stopping(&context, &job, &never, attempt).await else {
            return;
        };
        match result {
            Ok(()) => {
                forget(&context, &durable.record.id).await;
                finish(&job, Ok(()));
                return;
            }
            Err(error) if error.resumable() => {
                // An attempt that got as far as transferring made progress: start the
                // pauses over, so the next interruption is retried at once.
                if job.info.borrow().state == JobState::Transferring {
                    pause = FIRST_RETRY_PAUSE;
                    restart_window(&context, &mut durable.record).await;
                }
                debug!(error = %error.failure().message, "resume attempt failed");
                reason = error.interruption();
                let paused = async {
                    tokio::time::sleep(pause).await;
                    Ok(())
                };
                if or_cancel(&cancel, paused).await.is_err() {
                    farewell(&context, &durable.record).await;
                    job.fail(JobError::Cancelled.failure());
                    end_for_good(&context, &durable).await;
                    return;
                }
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(error) => {
                // Cancelled before the two sides were talking again: the other side is
                // waiting and has not heard.
                if matches!(error, JobError::Cancelled)
                    && job.info.borrow().state != JobState::Transferring
                {
                    farewell(&context, &durable.record).await;
                }
                end_for_good(&context, &durable).await;
                finish(&job, Err(error));
                return;
            }
        }
    }
}

/// One attempt: meet on the rejoin channel, open a session from the resume secret,
/// connect, prove the channel, and continue the transfer from verified data.
async fn attempt(job: &Arc<Job>, context: &Context, durable: &Durable) -> Result<(), JobError> {
    let record = &durable.record;
    let secret = record.secret();
    let role = match record.direction {
        Direction::Send => Role::Sender,
        Direction::Receive => Role::Receiver,
    };
    let mut client = context.rendezvous_url.connect().await?;
    client
        .rejoin(&rejoin_channel(secret), role == Role::Sender)
        .await?;
    job.set_state(JobState::Negotiating);
    let mut session = Session::resume(client, role, secret).await?;
    // Each side says first whether it continues or was cancelled while apart.
    session.send(CONTINUE).await?;
    if session.recv().await? == CANCEL {
        session.close().await;
        return Err(JobError::Transfer(TransferError::PeerCancelled(
            "the transfer was cancelled while it was interrupted".into(),
        )));
    }
    let binding_key = session.binding_key();
    let settings = settings_for(context, record.path, &session)?;
    let cancel = job.cancel.clone();
    let mut connection = match role {
        Role::Sender => rtc::connect_offerer(session, &settings, &cancel).await?,
        Role::Receiver => rtc::connect_answerer(session, &settings, &cancel).await?,
    };
    if let Err(error) = secure(&mut connection, &binding_key, role, record.path, job).await {
        connection.close().await;
        return Err(error);
    }
    job.set_state(JobState::Transferring);
    let result = match &durable.work {
        Work::Send(sources) => {
            until_lost(
                &connection,
                sender::resume(&connection.link, sources, job.as_ref(), &cancel),
            )
            .await
        }
        Work::Receive(plan) => {
            until_lost(
                &connection,
                receiver::resume(
                    &connection.link,
                    plan,
                    &record.manifest,
                    job.as_ref(),
                    &cancel,
                ),
            )
            .await
        }
    };
    connection.close().await;
    Ok(result?)
}

/// Gives an interrupted job a full resume window from now, and records it.
async fn restart_window(context: &Context, record: &mut JobRecord) {
    record.deadline_unix =
        record::unix_now().saturating_add(context.config.resume_window.as_secs());
    let (records, copy) = (context.records.clone(), record.clone());
    let saved = tokio::task::spawn_blocking(move || records.save(&copy)).await;
    if !matches!(saved, Ok(Ok(()))) {
        warn!("cannot record the job's new resume deadline");
    }
}

/// The first sealed message of a resumed session: the side goes on, or gives up.
const CONTINUE: &[u8] = b"continue";
const CANCEL: &[u8] = b"cancel";
/// How long a job cancelled while interrupted tries to tell its peer.
const FAREWELL_LIMIT: Duration = Duration::from_secs(10);

/// Tells the other side of an interrupted job that it was cancelled here, if it can be
/// reached on the rejoin channel within a few seconds (it waits there when its daemon runs).
async fn farewell(context: &Context, record: &JobRecord) {
    let secret = record.secret();
    let role = match record.direction {
        Direction::Send => Role::Sender,
        Direction::Receive => Role::Receiver,
    };
    let told = tokio::time::timeout(FAREWELL_LIMIT, async {
        let mut client = context.rendezvous_url.connect().await?;
        client
            .rejoin(&rejoin_channel(secret), role == Role::Sender)
            .await?;
        let mut session = Session::resume(client, role, secret).await?;
        session.send(CANCEL).await?;
        let _ = session.recv().await;
        session.close().await;
        Ok::<(), SignalError>(())
    })
    .await;
    match told {
        Ok(Ok(())) => info!("told the other side the transfer is cancelled"),
        _ => info!("the other side was not reachable to hear of the cancellation"),
    }
}

/// The job will not resume: forget its record and, on the receiving side, its partials.
async fn end_for_good(context: &Context, durable: &Durable) {
    if let Work::Receive(plan) = &durable.work {
        discard_partials(&durable.record, plan).await;
    }
    forget(context, &durable.record.id).await;
}

/// Removes a job's record (a directory tree) on a blocking thread.
async fn forget(context: &Context, id: &str) {
    let (records, id) = (context.records.clone(), id.to_owned());
    let _ = tokio::task::spawn_blocking(move || records.remove(&id)).await;
}

async fn discard_partials(record: &JobRecord, plan: &receiver::Plan) {
    let (dir, manifest, tag) = (plan.dir.clone(), record.manifest.clone(), plan.tag.clone());
    // The disk threads of a run cut short may still be writing these files.
    let guard = plan.disk.enter().await;
    let _ = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        receiver::discard(&dir, &manifest, &tag)
    })
    .await;
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
