//! `p2p receive`: with the sender's code (asked for when not given), or with a pasted
//! offer (`--manual`); then following the job, asking before anything is accepted.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{Direction, JobState, JobSummary, PathPolicy, Request, ServerFrame};
use p2pd::rendezvous::Code;

use crate::follow::{Interrupt, Role, follow};
use crate::render::Renderer;
use crate::{absolute, manual, prompt};

pub async fn receive(
    socket: &Path,
    code: Option<String>,
    output: Option<PathBuf>,
    (yes, json, manual): (bool, bool, bool),
    path: PathPolicy,
) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    if !yes && !interactive {
        bail!("not accepting files without asking: run p2p receive on a terminal, or pass --yes");
    }
    if manual {
        eprintln!("Paste the sender's offer (one line), then press Enter:");
        let offer = manual::read_description(p2pd::rtc::peer::manual::Kind::Offer)?;
        let download_dir = output.map(|o| absolute(&o)).transpose()?;
        let mut client = IpcClient::connect(socket).await?;
        let interrupt = Interrupt::catch()?;
        let first = client
            .call(Request::ReceiveManual {
                offer,
                download_dir,
                accept: yes,
                follow: true,
                path,
            })
            .await?;
        return follow(
            socket,
            client,
            (first, interrupt),
            Renderer::new(json),
            !yes,
            Role::Owner,
        )
        .await;
    }
    let code = match code {
        Some(code) => code,
        // Asking keeps the code out of the process list and shell history; offers waiting
        // in the inbox are offered first (issue #29: they were invisible here).
        None if interactive => {
            let waiting = inbox_offers(socket).await?;
            if waiting.is_empty() {
                prompt("Code: ")?
            } else {
                eprintln!("Offers waiting for an answer:");
                for job in &waiting {
                    eprintln!(
                        "  {:>4}  from {}, {}",
                        job.id,
                        p2pd::terminal::escape_controls(job.device.as_deref().unwrap_or("")),
                        if job.message_offered {
                            "a message".to_owned()
                        } else {
                            format!(
                                "{} file(s), {}",
                                job.files,
                                indicatif::HumanBytes(job.bytes_total)
                            )
                        }
                    );
                }
                let typed = prompt("The number of an offer above, or the sender's code: ")?;
                let picked = typed
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|id| waiting.iter().any(|j| j.id == *id));
                if let Some(id) = picked {
                    return answer_offer(socket, id, json).await;
                }
                typed
            }
        }
        None => {
            bail!("no code given: pass the sender's code, like p2p receive 7-orbit-lantern")
        }
    };
    let code: Code = code.parse()?;
    let download_dir = output.map(|o| absolute(&o)).transpose()?;
    let mut client = IpcClient::connect(socket).await?;
    let request = Request::Receive {
        code: code.to_string(),
        download_dir,
        accept: yes,
        follow: true,
        path,
    };
    let interrupt = Interrupt::catch()?;
    let first = client.call(request).await?;
    follow(
        socket,
        client,
        (first, interrupt),
        Renderer::new(json),
        !yes,
        Role::Owner,
    )
    .await
}

/// Offers from paired and nearby devices waiting for this person's answer.
async fn inbox_offers(socket: &Path) -> anyhow::Result<Vec<JobSummary>> {
    let mut client = IpcClient::connect(socket).await?;
    match client.call(Request::List).await? {
        ServerFrame::Jobs(jobs) => Ok(jobs
            .into_iter()
            .filter(|j| {
                j.direction == Direction::Receive
                    && j.device.is_some()
                    && j.state == JobState::AwaitingApproval
            })
            .collect()),
        other => Err(crate::follow::unexpected(other)),
    }
}

/// Shows offer `id` and asks, as `p2p watch` does; the offer stays in the inbox if this
/// command is stopped.
async fn answer_offer(socket: &Path, id: u64, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    let interrupt = Interrupt::catch()?;
    let first = client.call(Request::Watch { job: id }).await?;
    follow(
        socket,
        client,
        (first, interrupt),
        Renderer::new(json),
        true,
        Role::Watcher,
    )
    .await
}

/// `p2p receive CODE --stdout`: the one file of the offer, received into a spool folder
/// the daemon makes in its state directory and keeps while this command's connection is
/// open, then written to stdout once verified. The folder goes when the connection ends,
/// whatever the outcome.
pub async fn to_stdout(
    socket: &Path,
    code: Option<String>,
    yes: bool,
    path: PathPolicy,
) -> anyhow::Result<ExitCode> {
    let Some(code) = code else {
        bail!("--stdout needs the code on the command line: p2p receive CODE --stdout");
    };
    if !yes && !std::io::stdin().is_terminal() {
        bail!("not accepting files without asking: run p2p receive on a terminal, or pass --yes");
    }
    let code: Code = code.parse()?;
    // Held to the end: the spool lives as long as this connection.
    let mut holding = IpcClient::connect(socket).await?;
    let dir = match holding.call(Request::Spool).await? {
        ServerFrame::Spool { dir } => dir,
        other => return Err(crate::follow::unexpected(other)),
    };
    let mut client = IpcClient::connect(socket).await?;
    let request = Request::Receive {
        code: code.to_string(),
        download_dir: Some(dir.clone()),
        accept: false,
        follow: true,
        path,
    };
    let interrupt = Interrupt::catch()?;
    let first = client.call(request).await?;
    let renderer = Renderer::new(false).with_stdout_data(yes);
    let done = follow(
        socket,
        client,
        (first, interrupt),
        renderer,
        true,
        Role::Owner,
    )
    .await?;
    if done != ExitCode::SUCCESS {
        return Ok(done);
    }
    // A message is printed as it comes; a file is the one regular file there.
    let file = std::fs::read_dir(&dir)?
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()));
    if let Some(file) = file {
        let mut stdout = std::io::stdout().lock();
        std::io::copy(&mut std::fs::File::open(file.path())?, &mut stdout)?;
        std::io::Write::flush(&mut stdout)?;
    }
    drop(holding);
    Ok(ExitCode::SUCCESS)
}
