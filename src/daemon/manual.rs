//! Jobs signaled by hand (`p2p send --manual`, `p2p receive --manual`): no rendezvous and
//! no code. The sender's job shows its offer and waits for the pasted answer; the
//! receiver's job answers a pasted offer. Once the channel is open both sides show the
//! short authentication string (`transfer::sas`) instead of proving a code's key, and the
//! transfer runs as a coded one does, except that it cannot resume: resuming finds the
//! other side again through the rendezvous, which a manual job never used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use tracing::Instrument;

use super::jobs::{Context, Job, Jobs, failure, file_infos};
use super::runner::{JobError, approval, check_route, finish, or_cancel, until_lost};
use crate::ipc::messages::{Direction, ErrorKind, Failure, JobInfo, JobState, PathPolicy};
use crate::lan::announce::on_local_subnet;
use crate::rendezvous::Role;
use crate::rtc::peer::candidates::CandidatePolicy;
use crate::rtc::peer::manual::{self, Kind};
use crate::rtc::{self, RtcSettings};
use crate::transfer::receiver::{Answer, Question};
use crate::transfer::source::Sources;
use crate::transfer::{self, receiver, sas, sender};

/// How long a sender's offer waits for the answer to be pasted back.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10 * 60);
/// How long a side waits for the channel once both descriptions are in place (the
/// receiver's clock starts when it shows its answer, which a person still has to carry).
pub const CONNECT_WAIT: Duration = Duration::from_secs(10 * 60);

/// Where a manual job's other description comes from, and goes.
pub(super) enum Via {
    /// A person pastes it (`--manual`).
    Person,
    /// A nearby daemon's LAN connection carries it (`--nearby`): host candidates only.
    Nearby(NearbyLink),
}

pub(super) enum NearbyLink {
    /// Sender: the nearby daemon to offer to, and this daemon's display name.
    To(SocketAddr, String),
    /// Receiver: where the answer goes.
    From(oneshot::Sender<String>),
}

fn settings_for(context: &Context, path: PathPolicy, via: &Via) -> Result<RtcSettings, JobError> {
    let mut settings = RtcSettings {
        relay_only: path == PathPolicy::ForceRelay,
        ..context.config.rtc.clone()
    };
    match via {
        Via::Person => {}
        // The LAN only: no STUN, no TURN, nothing that leaves it. The sender's person chose
        // the device, whose answer aims this side's checks only at this machine's subnets.
        Via::Nearby(NearbyLink::To(..)) => {
            settings.ice_servers.clear();
            let subnets = super::nearby::local_subnets();
            settings.remote_candidates =
                CandidatePolicy::only(move |ip| on_local_subnet(ip, &subnets));
        }
        // Anyone on the LAN can offer, unauthenticated, before any person approved it
        // (issue #23): this side probes none of the addresses the offer names and answers
        // only the checks that reach it, which the offering daemon sends to this side's
        // host candidates.
        Via::Nearby(NearbyLink::From(_)) => {
            settings.ice_servers.clear();
            settings.remote_candidates = CandidatePolicy::answer_only();
        }
    }
    if settings.relay_only && !settings.has_relay() {
        return Err(JobError::NoRelay);
    }
    Ok(settings)
}

impl Jobs {
    pub(super) fn start_manual_send(
        &self,
        sources: Sources,
        text: Option<String>,
        path: PathPolicy,
        via: Via,
    ) -> Arc<Job> {
        let files = file_infos(&sources.manifest);
        let job = self.register(Direction::Send, JobState::Connecting, None, files);
        if matches!(via, Via::Nearby(_)) {
            job.mark_nearby();
        }
        job.info
            .send_modify(|info| info.skipped = sources.manifest.skipped.clone());
        let id = job.info.borrow().id;
        let context = self.context.clone();
        self.tracker.spawn(
            run_send(job.clone(), context, sources, text, path, via)
                .instrument(tracing::info_span!("job", id, dir = "send", manual = true)),
        );
        job
    }

    pub async fn start_receive_manual(
        &self,
        offer: &str,
        dir: Option<PathBuf>,
        accept: bool,
        path: PathPolicy,
    ) -> Result<JobInfo, Failure> {
        self.start_receive_via(offer, dir, accept, path, Via::Person)
            .await
            .map(|job| job.info.borrow().clone())
    }

    pub(super) async fn start_receive_via(
        &self,
        offer: &str,
        dir: Option<PathBuf>,
        accept: bool,
        path: PathPolicy,
        via: Via,
    ) -> Result<Arc<Job>, Failure> {
        self.refuse_if_stopping()?;
        let path = self.resolve_path(path)?;
        let sdp = manual::decode(offer, Kind::Offer)
            .map_err(|e| failure(ErrorKind::BadRequest, e.to_string()))?;
        let dir = self.download_dir(dir)?;
        let job = self.register(Direction::Receive, JobState::Connecting, None, Vec::new());
        if matches!(via, Via::Nearby(_)) {
            job.mark_nearby();
        }
        job.info
            .send_modify(|info| info.destination = Some(dir.clone()));
        let id = job.info.borrow().id;
        let context = self.context.clone();
        self.tracker.spawn(
            run_receive(job.clone(), context, sdp, (dir, accept), path, via).instrument(
                tracing::info_span!("job", id, dir = "receive", manual = true),
            ),
        );
        Ok(job)
    }
}

/// Instead of a code's channel proof: the authentication string, shown on this side; then
/// the route, as a coded job reports and checks it.
async fn compare_strings(
    connection: &rtc::Connection,
    role: Role,
    path: PathPolicy,
    job: &Job,
) -> Result<(), JobError> {
    let sas = sas::exchange(connection, &connection.link, role).await?;
    job.set_sas(sas);
    check_route(connection, path, job).await
}

/// This side's person's answer to "does the other screen show the same string?", while
/// the job waits in `Comparing`; no answer is no.
async fn compared(job: &Job) -> bool {
    let same = job.ask();
    job.set_state(JobState::Comparing);
    same.await.unwrap_or(false)
}

async fn run_send(
    job: Arc<Job>,
    context: Arc<Context>,
    sources: Sources,
    text: Option<String>,
    path: PathPolicy,
    via: Via,
) {
    let cancel = job.cancel.clone();
    let result = async {
        let settings = settings_for(&context, path, &via)?;
        let (mut pending, offer) =
            or_cancel(&cancel, async { Ok(manual::offer(&settings).await?) }).await?;
        let answer = match via {
            Via::Person => {
                let answered = job.expect_answer();
                job.show_signal(offer);
                job.set_state(JobState::WaitingForPeer);
                tokio::select! {
                    _ = cancel.cancelled() => Err(JobError::Cancelled),
                    _ = tokio::time::sleep(ANSWER_WAIT) => Err(JobError::NoAnswer),
                    answer = answered => answer.map_err(|_| JobError::Cancelled),
                }
            }
            Via::Nearby(NearbyLink::To(addr, name)) => {
                job.set_state(JobState::WaitingForPeer);
                or_cancel(&cancel, async {
                    super::nearby::offer(addr, name, offer)
                        .await
                        .map_err(JobError::Nearby)
                })
                .await
            }
            Via::Nearby(NearbyLink::From(_)) => Err(JobError::Cancelled),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                pending.close().await;
                return Err(error);
            }
        };
        job.set_state(JobState::Negotiating);
        // The client checked the answer before handing it over; a daemon asked directly
        // checks again.
        let sdp = match manual::decode(&answer, Kind::Answer) {
            Ok(sdp) => sdp,
            Err(error) => {
                pending.close().await;
                return Err(JobError::Rtc(match error {
                    manual::BlobError::TooManyCandidates(many) => many.into(),
                    _ => rtc::RtcError::BadSignal,
                }));
            }
        };
        if let Err(error) = pending.apply_answer(&sdp).await {
            pending.close().await;
            return Err(error.into());
        }
        let connection = pending.connected(CONNECT_WAIT, &cancel).await?;
        if let Err(error) = compare_strings(&connection, Role::Sender, path, &job).await {
            connection.close().await;
            return Err(error);
        }
        // Nothing — not a name, not a byte — goes out before this side's person has seen
        // the same string as the receiver's: whoever carried the descriptions may be the
        // one at the other end.
        let same = tokio::select! {
            _ = cancel.cancelled() => Err(JobError::Cancelled),
            same = compared(&job) => Ok(same),
        };
        if !matches!(same, Ok(true)) {
            transfer::abandon(
                &connection.link,
                "the sender did not confirm the authentication string",
            )
            .await;
            connection.close().await;
            return Err(same.err().unwrap_or(JobError::NotConfirmed));
        }
        let result = match &text {
            Some(text) => {
                until_lost(
                    &connection,
                    sender::send_text(&connection.link, text, &cancel),
                )
                .await
            }
            None => {
                job.set_state(JobState::AwaitingApproval);
                let accepted = async {
                    job.set_state(JobState::Transferring);
                    Ok(())
                };
                let sent = until_lost(
                    &connection,
                    sender::send(&connection.link, &sources, job.as_ref(), accepted, &cancel),
                )
                .await;
                if sent.is_ok() {
                    super::runner::close_after_done(connection);
                    return Ok(sent?);
                }
                sent
            }
        };
        connection.close().await;
        Ok(result?)
    }
    .await;
    finish(&job, result);
}

async fn run_receive(
    job: Arc<Job>,
    context: Arc<Context>,
    offer_sdp: String,
    (dir, accept): (PathBuf, bool),
    path: PathPolicy,
    via: Via,
) {
    let cancel = job.cancel.clone();
    let result = async {
        let settings = settings_for(&context, path, &via)?;
        let nearby = matches!(via, Via::Nearby(_));
        job.set_state(JobState::Negotiating);
        let (pending, answer) = or_cancel(&cancel, async {
            Ok(manual::answer(&settings, &offer_sdp).await?)
        })
        .await?;
        match via {
            // Nothing to wait for on this side: the person carries the answer over.
            Via::Person => job.show_signal(answer),
            // The nearby sender's connection carries it; if it is gone, so is the job.
            Via::Nearby(NearbyLink::From(reply)) => {
                if reply.send(answer).is_err() {
                    pending.close().await;
                    return Err(JobError::Transfer(transfer::TransferError::PeerGone));
                }
            }
            Via::Nearby(NearbyLink::To(..)) => {}
        }
        let connection = pending.connected(CONNECT_WAIT, &cancel).await?;
        if let Err(error) = compare_strings(&connection, Role::Receiver, path, &job).await {
            connection.close().await;
            return Err(error);
        }
        // Nobody waits at a terminal for a nearby offer: one unanswered for a while is
        // declined, so it does not hold one of the few places nearby offers have.
        let limit = nearby.then_some(super::nearby::DECISION_LIMIT);
        let asked = job.clone();
        let approve = move |question| async move {
            match question {
                Question::Offer => Answer::from_yes(approval(asked, accept, limit).await),
                // A message is shown as the sender's words, and whoever carried the
                // pasted descriptions may be the one sending it: it waits until this
                // side's person says the strings are the same, even with --yes (which
                // takes files unasked; they are kept under their names, not shown as
                // what the sender says). Refusing messages, as nearby receivers do,
                // would take them from the person who is at the terminal to compare.
                Question::Message => match compared(&asked).await {
                    true => Answer::Yes,
                    false => Answer::NotCompared,
                },
            }
        };
        // No journal: a manual job cannot resume, so nothing is kept for it.
        let plan = Arc::new(receiver::Plan {
            dir: dir.clone(),
            limits: context.config.limits,
            messages: !nearby,
            tag: crate::daemon::record::random_hex(4),
            journal: None,
            disk: Default::default(),
            space: context.space.clone(),
        });
        let result = until_lost(
            &connection,
            receiver::receive(&connection.link, &plan, job.as_ref(), approve, &cancel),
        )
        .await;
        connection.close().await;
        result.map(|_| ()).map_err(JobError::from)
    };
    finish(&job, result.await);
}
