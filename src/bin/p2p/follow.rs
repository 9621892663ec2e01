//! Following a job to its end, and what Ctrl-C means while doing so: the `p2p send` or
//! `p2p receive` that started a job owns it, so Ctrl-C cancels it (the daemon withdraws
//! the code, tells the other side and removes partial files); `p2p watch` only looks on,
//! so Ctrl-C stops watching. A `p2p` that ends any other way (its terminal closed, killed)
//! leaves the job to the daemon, as `--detach` does.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{Direction, ErrorKind, JobInfo, JobState, Request, ServerFrame};
use p2pd::rtc::peer::manual::Kind;

use crate::render::Renderer;

/// The shell's exit status for a command stopped by SIGINT.
const INTERRUPTED: u8 = 130;
/// How long a cancelled job may take to report its end before `p2p` exits anyway.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Whose job the followed one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started by this command: Ctrl-C cancels it.
    Owner,
    /// Attached with `p2p watch`: Ctrl-C only stops watching.
    Watcher,
}

pub fn unexpected(frame: ServerFrame) -> anyhow::Error {
    match frame {
        ServerFrame::Error { message, .. } => anyhow!(message),
        _ => anyhow!("p2pd sent an unexpected reply"),
    }
}

/// Ctrl-C, caught from before the request that starts or attaches to a job is sent, so
/// that it never falls through to the default (killing `p2p` and leaving the job).
pub struct Interrupt(tokio::signal::unix::Signal);

impl Interrupt {
    pub fn catch() -> anyhow::Result<Interrupt> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Interrupt(signal(SignalKind::interrupt())?))
    }

    async fn pressed(&mut self) {
        self.0.recv().await;
    }
}

/// Follows a job until it ends; exits 0 only if it completed, 130 after Ctrl-C.
pub async fn follow(
    socket: &Path,
    mut client: IpcClient,
    (first, mut interrupt): (ServerFrame, Interrupt),
    mut renderer: Renderer,
    may_ask: bool,
    role: Role,
) -> anyhow::Result<ExitCode> {
    let mut frame = first;
    let mut asked = false;
    // Manual signaling: this side's description and the authentication string, once each.
    let (mut signal_shown, mut sas_shown, mut compared) = (false, false, false);
    // The job as the frames describe it: lists once, then changes (see ipc::delta).
    let mut view: Option<JobInfo> = None;
    loop {
        match frame {
            ServerFrame::Created(summary) => {
                let info = JobInfo::from_summary(&summary);
                renderer.created(&info);
                view = Some(info);
            }
            ServerFrame::Done => break,
            ServerFrame::Error { .. } | ServerFrame::Hello { .. } | ServerFrame::Jobs(_) => {
                return Err(unexpected(frame));
            }
            other => {
                let info = view.get_or_insert_with(JobInfo::default);
                if info.apply(&other) {
                    renderer.update(info);
                    if !signal_shown && info.signal.is_some() {
                        signal_shown = true;
                        renderer.show_signal(info)?;
                        if info.direction == Direction::Send && role == Role::Owner {
                            let answer = tokio::select! {
                                answer = tokio::task::spawn_blocking(|| crate::manual::read_description(Kind::Answer)) => answer?,
                                _ = interrupt.pressed() => {
                                    let job = (info.id, info.code.is_some());
                                    return stop(socket, client, renderer, job, role).await;
                                }
                            };
                            // No answer (stdin closed, three bad pastes): the offer is
                            // withdrawn rather than left waiting for one.
                            let answer = match answer {
                                Ok(answer) => answer,
                                Err(error) => {
                                    let mut cancelling = IpcClient::connect(socket).await?;
                                    let _ = cancelling.call(Request::Cancel { job: info.id }).await;
                                    return Err(error);
                                }
                            };
                            let mut answering = IpcClient::connect(socket).await?;
                            match answering
                                .call(Request::Answer {
                                    job: info.id,
                                    answer,
                                })
                                .await?
                            {
                                ServerFrame::Done => {}
                                other => return Err(unexpected(other)),
                            }
                        }
                    }
                    if !sas_shown && info.sas.is_some() {
                        sas_shown = true;
                        renderer.show_sas(info)?;
                    }
                    // A question for this side's person: the comparison of the
                    // authentication strings, by a manual sender before anything is sent
                    // or a manual receiver before a message is shown (read from stdin like
                    // the pasted lines before it, terminal or script, even with --yes), or
                    // the receiver's offer.
                    let question: Option<fn() -> anyhow::Result<bool>> =
                        if !compared && role == Role::Owner && info.state == JobState::Comparing {
                            compared = true;
                            renderer.ask_same_sas(info)?;
                            Some(read_yes_from_stdin)
                        } else if may_ask && !asked && info.state == JobState::AwaitingApproval {
                            asked = true;
                            if let Some(problem) = renderer.refusal(info) {
                                let mut decider = IpcClient::connect(socket).await?;
                                let _ = decider
                                    .call(Request::Decide {
                                        job: info.id,
                                        accept: false,
                                    })
                                    .await;
                                bail!(problem);
                            }
                            if renderer.takes_without_asking() {
                                Some(|| Ok(true))
                            } else {
                                renderer.show_offer(info)?;
                                Some(read_yes)
                            }
                        } else {
                            None
                        };
                    if let Some(read) = question {
                        // Read on a thread, so that Ctrl-C at the question still cancels.
                        let accept = tokio::select! {
                            answer = tokio::task::spawn_blocking(read) => answer??,
                            _ = interrupt.pressed() => {
                                let job = (info.id, info.code.is_some());
                                return stop(socket, client, renderer, job, role).await;
                            }
                        };
                        let mut decider = IpcClient::connect(socket).await?;
                        decider
                            .call(Request::Decide {
                                job: info.id,
                                accept,
                            })
                            .await?;
                    }
                }
            }
        }
        let next = tokio::select! {
            next = client.next() => next?,
            _ = interrupt.pressed() => {
                let Some(job) = view.as_ref().map(|v| (v.id, v.code.is_some())) else {
                    return Ok(ExitCode::from(INTERRUPTED));
                };
                return stop(socket, client, renderer, job, role).await;
            }
        };
        frame = match next {
            Some(frame) => frame,
            None => {
                bail!("p2pd stopped while following the job: see `p2p status` once it runs again")
            }
        };
    }
    renderer.finish();
    match view {
        Some(info) if info.state == JobState::Completed => Ok(ExitCode::SUCCESS),
        // Saying no is this side's choice, not an error; it is still not a transfer.
        Some(info)
            if info.direction == Direction::Receive
                && info
                    .failure
                    .as_ref()
                    .is_some_and(|f| f.kind == ErrorKind::Declined) =>
        {
            eprintln!("Declined: nothing was saved");
            Ok(ExitCode::FAILURE)
        }
        Some(info) => {
            let message = info
                .failure
                .map(|f| f.message)
                .unwrap_or_else(|| "the job did not complete".into());
            bail!(message)
        }
        None => bail!("p2pd ended the job without reporting it"),
    }
}

/// Ctrl-C: the owner cancels the job and waits (briefly) for the daemon to report it
/// ended; a watcher just leaves. One line either way.
async fn stop(
    socket: &Path,
    mut following: IpcClient,
    mut renderer: Renderer,
    (job, had_code): (u64, bool),
    role: Role,
) -> anyhow::Result<ExitCode> {
    renderer.interrupted();
    if role == Role::Watcher {
        eprintln!(
            "Stopped watching job {job}; it goes on in p2pd (p2p watch {job} to follow it, p2p cancel {job} to stop it)"
        );
        return Ok(ExitCode::from(INTERRUPTED));
    }
    let mut client = IpcClient::connect(socket).await?;
    match client.call(Request::Cancel { job }).await? {
        ServerFrame::Done => {}
        // It ended on its own just before: say how, as following it would have.
        ServerFrame::Error { message, .. } => bail!(message),
        other => return Err(unexpected(other)),
    }
    // The followed stream ends once the job is final (the code withdrawn, partials gone).
    let _ = tokio::time::timeout(CANCEL_WAIT, async {
        while let Ok(Some(frame)) = following.next().await {
            if matches!(frame, ServerFrame::Done) {
                break;
            }
        }
    })
    .await;
    eprintln!(
        "Cancelled job {job}: {}the other side was told, and partial files were removed",
        if had_code {
            "its code no longer works, "
        } else {
            ""
        }
    );
    Ok(ExitCode::from(INTERRUPTED))
}

/// A yes or no from stdin, terminal or not; anything but yes is no, and so is EOF.
fn read_yes_from_stdin() -> anyhow::Result<bool> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim().to_lowercase().as_str(), "y" | "yes"))
}

/// The answer to "Accept? [y/N]"; anything but yes is no, and so is a closed stdin.
fn read_yes() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim().to_lowercase().as_str(), "y" | "yes"))
}
