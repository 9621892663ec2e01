//! `p2p inbox`: offers from paired and nearby devices waiting for an answer, with the
//! first names of what they offer; `--watch` asks about each as it arrives.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use indicatif::HumanBytes;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{Direction, JobState, JobSummary, Request, ServerFrame};
use p2pd::terminal::escape_controls;

use crate::follow::unexpected;

/// Offers from paired and nearby devices waiting for a yes or no.
pub async fn inbox(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    let jobs = match client.call(Request::List).await? {
        ServerFrame::Jobs(jobs) => jobs,
        other => return Err(unexpected(other)),
    };
    let waiting: Vec<_> = jobs
        .into_iter()
        .filter(|j| {
            // A nearby offer shows from the moment its string can be compared (the sender's
            // person compares first, and only then is anything offered).
            let comparing =
                j.sas.is_some() && matches!(j.state, JobState::Negotiating | JobState::Connecting);
            j.direction == Direction::Receive
                && j.device.is_some()
                && (j.state == JobState::AwaitingApproval || comparing)
        })
        .collect();
    let mut names = Vec::with_capacity(waiting.len());
    for job in &waiting {
        names.push(first_names(socket, job).await?);
    }
    if json {
        for (job, names) in waiting.iter().zip(&names) {
            println!(
                "{}",
                serde_json::json!({
                    "job": job.id,
                    "from": job.device,
                    "files": job.files,
                    "bytes": job.bytes_total,
                    "names": names,
                    "text": job.text,
                    "message": job.message_offered,
                    "sas": job.sas,
                })
            );
        }
    } else if waiting.is_empty() {
        eprintln!(
            "Nothing waiting: offers from paired devices whose rule is ask, and from nearby devices, show up here"
        );
    } else {
        println!(
            "{:>4}  {:<32}  {:>5}  {:>10}  COMPARE",
            "ID", "FROM", "FILES", "SIZE"
        );
        for (job, names) in waiting.iter().zip(&names) {
            let (files, size) = if job.message_offered {
                ("-".to_owned(), "a message".to_owned())
            } else if job.state == JobState::AwaitingApproval {
                (
                    job.files.to_string(),
                    HumanBytes(job.bytes_total).to_string(),
                )
            } else {
                ("-".to_owned(), "comparing".to_owned())
            };
            println!(
                "{:>4}  {:<32}  {:>5}  {:>10}  {}",
                job.id,
                escape_controls(job.device.as_deref().unwrap_or("")),
                files,
                size,
                job.sas
                    .as_deref()
                    .map(escape_controls)
                    .unwrap_or_else(|| "-".into())
            );
            if !names.is_empty() {
                let more = job.files.saturating_sub(names.len() as u64);
                let listed: Vec<String> = names.iter().map(|n| escape_controls(n)).collect();
                match more {
                    0 => println!("      {}", listed.join(", ")),
                    more => println!("      {} and {more} more", listed.join(", ")),
                }
            }
        }
        eprintln!(
            "p2p accept ID takes an offer, p2p decline ID refuses it; for a nearby one, first check the sender's screen shows the same COMPARE string"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Names shown per offer in `p2p inbox`.
const NAMES_SHOWN: usize = 3;

/// The first names of an offer's files, from the daemon's first frames about the job
/// (its file list comes in chunks, closed by an update).
async fn first_names(socket: &Path, job: &JobSummary) -> anyhow::Result<Vec<String>> {
    if job.state != JobState::AwaitingApproval || job.files == 0 {
        return Ok(Vec::new());
    }
    let mut client = IpcClient::connect(socket).await?;
    client.send(Request::Watch { job: job.id }).await?;
    let mut names = Vec::new();
    while let Some(frame) = client.next().await? {
        match frame {
            ServerFrame::Files { files, .. } => names.extend(
                files
                    .into_iter()
                    .take(NAMES_SHOWN.saturating_sub(names.len()))
                    .map(|f| f.name),
            ),
            ServerFrame::Created(_) | ServerFrame::Skipped { .. } => {}
            _ => break,
        }
    }
    Ok(names)
}

/// How often `--watch` looks for new offers.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `p2p inbox --watch`: each offer waiting for an answer, as it arrives, with its names
/// and a question; ends when stdin does (Ctrl-D) or at Ctrl-C.
pub async fn watch(socket: &Path) -> anyhow::Result<ExitCode> {
    let mut answered: HashSet<u64> = HashSet::new();
    eprintln!("Waiting for offers (Ctrl-D or Ctrl-C ends)…");
    // Lines are read on a thread of their own, so the end of input ends the watch while
    // no question is asked, too.
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let mut client = IpcClient::connect(socket).await?;
        let jobs = match client.call(Request::List).await? {
            ServerFrame::Jobs(jobs) => jobs,
            other => return Err(unexpected(other)),
        };
        let new: Vec<&JobSummary> = jobs
            .iter()
            .filter(|j| {
                j.direction == Direction::Receive
                    && j.device.is_some()
                    && j.state == JobState::AwaitingApproval
                    && !answered.contains(&j.id)
            })
            .collect();
        for job in new {
            let what = if job.message_offered {
                "a message".to_owned()
            } else {
                let names = first_names(socket, job).await?;
                let more = job.files.saturating_sub(names.len() as u64);
                let listed: Vec<String> = names.iter().map(|n| escape_controls(n)).collect();
                let names = match more {
                    0 => listed.join(", "),
                    more => format!("{} and {more} more", listed.join(", ")),
                };
                format!("{names} ({})", HumanBytes(job.bytes_total))
            };
            eprint!(
                "Offer {} from {}: {what}. Accept? [y/N] ",
                job.id,
                escape_controls(job.device.as_deref().unwrap_or(""))
            );
            let Some(line) = lines.recv().await else {
                eprintln!();
                return Ok(ExitCode::SUCCESS);
            };
            let accept = matches!(line.trim().to_lowercase().as_str(), "y" | "yes");
            let mut decider = IpcClient::connect(socket).await?;
            match decider
                .call(Request::Decide {
                    job: job.id,
                    accept,
                })
                .await?
            {
                ServerFrame::Done if accept => {
                    eprintln!("Accepted: p2p watch {} follows it", job.id)
                }
                ServerFrame::Done => eprintln!("Declined: the sender is told"),
                // Gone meanwhile (the sender cancelled, it timed out): said, and on.
                ServerFrame::Error { message, .. } => eprintln!("{}", escape_controls(&message)),
                other => return Err(unexpected(other)),
            }
            answered.insert(job.id);
        }
        // Input ended between offers: done. (A line typed with no question pending is
        // not an answer to the next one.)
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            line = lines.recv() => if line.is_none() {
                return Ok(ExitCode::SUCCESS);
            },
        }
    }
}
