//! `p2p`: the command-line client. Talks only to the local daemon.

mod render;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use p2pd::config::default_socket_path;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{JobInfo, JobState, PathPolicy, Request, ServerFrame};
use p2pd::rendezvous::Code;
use p2pd::terminal::escape_controls;

use render::Renderer;

#[derive(Parser)]
#[command(
    name = "p2p",
    version,
    about = "Send and receive files through the p2pd daemon"
)]
struct Args {
    /// The daemon's control socket.
    #[arg(long, env = "P2PD_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Which network paths the transfer may use; the daemon's config gives the default.
#[derive(clap::Args)]
struct PathFlags {
    /// Use only a TURN relay (needs one in the daemon's config).
    #[arg(long, conflicts_with = "require_direct")]
    force_relay: bool,
    /// Fail rather than go through a relay.
    #[arg(long)]
    require_direct: bool,
}

impl PathFlags {
    fn policy(&self) -> PathPolicy {
        match (self.force_relay, self.require_direct) {
            (true, _) => PathPolicy::ForceRelay,
            (_, true) => PathPolicy::RequireDirect,
            _ => PathPolicy::Default,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Send files; prints a code for the receiver.
    Send {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per line instead of progress bars.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        path: PathFlags,
    },
    /// Receive files with the sender's code (asked for when not given).
    Receive {
        code: Option<String>,
        /// Save into this directory instead of the daemon's download directory.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Accept the offer without asking.
        #[arg(short, long)]
        yes: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        path: PathFlags,
    },
    /// List jobs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's progress.
    Watch {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job; the other side is told.
    Cancel { id: u64 },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(error) => {
            let line = error
                .chain()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            // The daemon escapes what it sends; this also covers a daemon that did not.
            eprintln!("error: {}", escape_controls(&line));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let socket = args.socket.unwrap_or_else(default_socket_path);
    match args.command {
        Command::Send { files, json, path } => {
            let paths = files
                .iter()
                .map(|f| absolute(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut client = IpcClient::connect(&socket).await?;
            let first = client
                .call(Request::Send {
                    paths,
                    follow: true,
                    path: path.policy(),
                })
                .await?;
            follow(&socket, client, first, Renderer::new(json), false).await
        }
        Command::Receive {
            code,
            output,
            yes,
            json,
            path,
        } => {
            let interactive = std::io::stdin().is_terminal();
            if !yes && !interactive {
                bail!(
                    "not accepting files without asking: run p2p receive on a terminal, or pass --yes"
                );
            }
            let code = match code {
                Some(code) => code,
                // Asking keeps the code out of the process list and shell history.
                None if interactive => prompt("Code: ")?,
                None => {
                    bail!("no code given: pass the sender's code, like p2p receive 7-orbit-lantern")
                }
            };
            let code: Code = code.parse()?;
            let download_dir = output.map(|o| absolute(&o)).transpose()?;
            let mut client = IpcClient::connect(&socket).await?;
            let request = Request::Receive {
                code: code.to_string(),
                download_dir,
                accept: yes,
                follow: true,
                path: path.policy(),
            };
            let first = client.call(request).await?;
            follow(&socket, client, first, Renderer::new(json), !yes).await
        }
        Command::Status { json } => {
            let mut client = IpcClient::connect(&socket).await?;
            match client.call(Request::List).await? {
                ServerFrame::Jobs(jobs) => {
                    render::print_status(&jobs, json);
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            }
        }
        Command::Watch { id, json } => {
            let mut client = IpcClient::connect(&socket).await?;
            let first = client.call(Request::Watch { job: id }).await?;
            follow(&socket, client, first, Renderer::new(json), true).await
        }
        Command::Cancel { id } => {
            let mut client = IpcClient::connect(&socket).await?;
            match client.call(Request::Cancel { job: id }).await? {
                ServerFrame::Done => {
                    eprintln!("job {id} cancelled");
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            }
        }
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

fn unexpected(frame: ServerFrame) -> anyhow::Error {
    match frame {
        ServerFrame::Error { message, .. } => anyhow!(message),
        _ => anyhow!("p2pd sent an unexpected reply"),
    }
}

/// Follows a job until it ends; exits 0 only if it completed.
async fn follow(
    socket: &Path,
    mut client: IpcClient,
    first: ServerFrame,
    mut renderer: Renderer,
    may_ask: bool,
) -> anyhow::Result<ExitCode> {
    let mut frame = first;
    let mut asked = false;
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
                    if may_ask && !asked && info.state == JobState::AwaitingApproval {
                        asked = true;
                        let accept = renderer.ask_accept(info)?;
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
        frame = match client.next().await? {
            Some(frame) => frame,
            None => {
                bail!("p2pd stopped while following the job: see `p2p status` once it runs again")
            }
        };
    }
    renderer.finish();
    match view {
        Some(info) if info.state == JobState::Completed => Ok(ExitCode::SUCCESS),
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

fn prompt(question: &str) -> anyhow::Result<String> {
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer")?;
    Ok(line.trim().to_owned())
}
