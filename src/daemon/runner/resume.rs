//! A durable job after its connection was lost: meeting again on the rejoin channel,
//! continuing from verified data, or ending for good (telling the other side).

use super::*;

/// Longest pause between two attempts to reach the other side again (a waiting attempt
/// itself sits on the rendezvous, so this only spaces out quick failures).
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(15);
const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Keeps trying to reach the other side through the rendezvous and continue, until the
/// job completes, fails for good, is cancelled, or its resume window closes.
pub(super) async fn resume_loop(
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
    match (&durable.work, &result) {
        (Work::Send(_), Ok(())) => super::close_after_done(connection),
        _ => connection.close().await,
    }
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
pub(super) async fn forget(context: &Context, id: &str) {
    let (records, id) = (context.records.clone(), id.to_owned());
    let _ = tokio::task::spawn_blocking(move || records.remove(&id)).await;
}

pub(super) async fn discard_partials(record: &JobRecord, plan: &receiver::Plan) {
    let (dir, manifest, tag) = (plan.dir.clone(), record.manifest.clone(), plan.tag.clone());
    // The disk threads of a run cut short may still be writing these files.
    let guard = plan.disk.enter().await;
    let _ = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        receiver::discard(&dir, &manifest, &tag)
    })
    .await;
}
