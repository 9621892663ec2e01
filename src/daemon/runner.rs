//! The body of one job, from the rendezvous to the last verified file.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::jobs::{Context, Job, signal_failure};
use crate::ipc::messages::PathPolicy;
use crate::ipc::messages::{ErrorKind, Failure, JobState};
use crate::rendezvous::client::RendezvousClient;
use crate::rendezvous::{Code, Role, Session, SignalError};
use crate::rtc::{self, RtcError, RtcSettings};
use crate::transfer::sender::SourceFile;
use crate::transfer::{self, TransferError, receiver, sender};

enum JobError {
    Signal(SignalError),
    Rtc(RtcError),
    Transfer(TransferError),
    /// `--require-direct`, and the only path was relayed.
    RelayForbidden,
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
                    TransferError::ReceiverFailed { reason, .. } if reason.contains("SHA-256") => {
                        ErrorKind::VerificationFailed
                    }
                    TransferError::Protocol(_)
                    | TransferError::BadOffer(_)
                    | TransferError::Unauthenticated => ErrorKind::Protocol,
                    _ => ErrorKind::Io,
                },
                error_line(e),
            ),
            JobError::Cancelled => (ErrorKind::Cancelled, "cancelled".to_owned()),
            JobError::RelayForbidden => (
                ErrorKind::NoRoute,
                "the only path found goes through a relay, and --require-direct forbids it: retry without it, or from networks with a direct path".to_owned(),
            ),
        };
        Failure { kind, message }
    }
}

/// The error and its causes on one line.
fn error_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

async fn or_cancel<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(JobError::Cancelled),
        result = work => result,
    }
}

fn finish(job: &Job, result: Result<(), JobError>) {
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

fn settings_for(context: &Context, path: PathPolicy) -> RtcSettings {
    RtcSettings {
        relay_only: path == PathPolicy::ForceRelay,
        ..context.config.rtc.clone()
    }
}

/// Reports the route, proves the channel (the first message each way), then enforces
/// `--require-direct`, telling the peer why when it refuses.
async fn secure(
    connection: &rtc::Connection,
    binding_key: &[u8; 32],
    role: Role,
    path: PathPolicy,
    job: &Job,
) -> Result<(), JobError> {
    let route = connection.route().await;
    job.set_route(route.clone());
    connection.authenticate(binding_key, role).await?;
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

pub async fn run_send(
    job: Arc<Job>,
    context: Arc<Context>,
    mut client: RendezvousClient,
    code: Code,
    files: Vec<SourceFile>,
    path: PathPolicy,
) {
    let cancel = job.cancel.clone();
    let result = async {
        or_cancel(&cancel, async { Ok(client.wait_for_peer().await?) }).await?;
        job.set_state(JobState::Negotiating);
        let session = or_cancel(&cancel, async {
            Ok(Session::establish(client, Role::Sender, &code).await?)
        })
        .await?;
        let binding_key = session.binding_key();
        let settings = settings_for(&context, path);
        let connection = rtc::connect_offerer(session, &settings, &cancel).await?;
        if let Err(error) = secure(&connection, &binding_key, Role::Sender, path, &job).await {
            connection.close().await;
            return Err(error);
        }
        job.set_state(JobState::Transferring);
        let result = sender::send(&connection.link, files, job.as_ref(), &cancel).await;
        connection.close().await;
        Ok(result?)
    }
    .await;
    finish(&job, result);
}

pub async fn run_receive(
    job: Arc<Job>,
    context: Arc<Context>,
    code: Code,
    dir: PathBuf,
    accept: bool,
    path: PathPolicy,
) {
    let cancel = job.cancel.clone();
    let result = async {
        let session = or_cancel(&cancel, async {
            let mut client = RendezvousClient::connect(&context.rendezvous_url).await?;
            client.claim(code.nameplate).await?;
            job.set_state(JobState::Negotiating);
            Ok(Session::establish(client, Role::Receiver, &code).await?)
        })
        .await?;
        let binding_key = session.binding_key();
        let settings = settings_for(&context, path);
        let connection = rtc::connect_answerer(session, &settings, &cancel).await?;
        if let Err(error) = secure(&connection, &binding_key, Role::Receiver, path, &job).await {
            connection.close().await;
            return Err(error);
        }
        let approval = {
            let job = job.clone();
            async move {
                if accept {
                    return true;
                }
                let answer = job.ask();
                job.set_state(JobState::AwaitingApproval);
                answer.await.unwrap_or(false)
            }
        };
        let transferring = {
            let job = job.clone();
            async move {
                let accepted = approval.await;
                if accepted {
                    job.set_state(JobState::Transferring);
                }
                accepted
            }
        };
        let result = receiver::receive(
            &connection.link,
            &dir,
            &context.config.limits,
            job.as_ref(),
            transferring,
            &cancel,
        )
        .await;
        connection.close().await;
        result.map(|_| ()).map_err(JobError::from)
    }
    .await;
    finish(&job, result);
}
