//! `p2p`: the command-line client. Talks only to the local daemon.

mod bars;
mod devices;
mod events;
mod follow;
mod inbox;
mod manual;
mod receive;
mod render;
mod spool;
mod status;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use p2pd::config::default_socket_path;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{JobInfo, PathPolicy, Recipient, Request, ServerFrame};
use p2pd::rendezvous::Code;
use p2pd::terminal::escape_controls;

use follow::{Interrupt, Role, follow, unexpected};
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
    /// Send files; prints a code for the receiver. Ctrl-C cancels the transfer.
    #[command(after_help = "Examples:
  p2p send report.pdf                    prints a code; p2p receive CODE takes it
  p2p send photos/ notes.txt             a folder (whole) and a file
  tar c project | p2p send - --name project.tar
  p2p send --to laptop report.pdf        to a paired device, no code
  p2p send --text \"see you at 8\"         a message instead of files
  p2p send --qr movie.mkv                a QR code of the page link, for a phone")]
    Send {
        /// Files and folders to send (a folder is sent whole, with its structure); `-` sends
        /// what arrives on stdin, as one file.
        #[arg(required_unless_present = "text", value_name = "FILES")]
        files: Vec<PathBuf>,
        /// The name the receiver gets for stdin (`p2p send - --name notes.txt`; default
        /// "stdin").
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Send this message instead of files; the receiver prints it (at most 16 KiB).
        #[arg(long, conflicts_with = "files", value_name = "TEXT")]
        text: Option<String>,
        /// Hand the job to p2pd and return once the code is printed (follow it later with
        /// p2p watch ID).
        #[arg(short, long)]
        detach: bool,
        /// Choose the code's two words, like orbit-lantern (from p2pd's word list; the
        /// number still comes from the rendezvous). Random words are harder to guess.
        #[arg(long, value_name = "WORDS")]
        code: Option<String>,
        /// One JSON object per line on stdout instead of progress bars.
        #[arg(long, conflicts_with = "manual")]
        json: bool,
        /// No code and no rendezvous: print this side's offer for the receiver to paste
        /// (as pion's data-channel examples do), then read its answer from stdin. Both
        /// sides show an authentication string to compare.
        #[arg(long, conflicts_with_all = ["code", "detach"])]
        manual: bool,
        /// Send to this paired device, without a code (p2p devices lists them). If it is
        /// offline, the job waits for it (24 h unless p2pd's device_wait_secs says otherwise).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["code", "manual"])]
        to: Option<String>,
        /// Send to this device on the same LAN (p2p nearby lists them), without a code, a
        /// rendezvous or the internet. Both screens then show a six-digit string to compare.
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with_all = ["code", "manual", "to", "detach", "force_relay", "require_direct"]
        )]
        nearby: Option<String>,
        /// Also show a QR code of the link to the rendezvous's page with the code in it, for
        /// a phone to open and receive in its browser.
        #[arg(long, conflicts_with_all = ["manual", "to", "nearby"])]
        qr: bool,
        #[command(flatten)]
        path: PathFlags,
    },
    /// Receive files with the sender's code (asked for when not given). Ctrl-C cancels.
    #[command(after_help = "Examples:
  p2p receive 48213-orbit-lantern        shows the offer and asks
  p2p receive                            lists offers in the inbox, or asks for a code
  p2p receive CODE -o ~/incoming -y      saves there without asking
  p2p receive CODE --stdout | tar x      one file, to stdout once verified")]
    Receive {
        /// The code the sender's p2p printed, like 7-orbit-lantern.
        code: Option<String>,
        /// Save into this directory instead of the daemon's download directory.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Accept the offer without asking.
        #[arg(short, long)]
        yes: bool,
        /// One JSON object per line on stdout instead of progress bars.
        #[arg(long, conflicts_with = "manual")]
        json: bool,
        /// No code: read the sender's pasted offer from stdin and print the answer to
        /// paste back. Compare the authentication string both sides show before accepting.
        #[arg(long, conflicts_with = "code")]
        manual: bool,
        /// Write the file to stdout once it is verified, like `p2p receive CODE --stdout |
        /// tar x` (one file only: an offer of several, or of a folder, is declined).
        #[arg(long, conflicts_with_all = ["output", "json", "manual"])]
        stdout: bool,
        #[command(flatten)]
        path: PathFlags,
    },
    /// List jobs.
    Status {
        /// One JSON object per job on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's progress; Ctrl-C stops watching, the job goes on.
    Watch {
        /// The job's number, as p2p status lists it.
        id: u64,
        /// One JSON object per line on stdout instead of progress bars.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job; the other side is told.
    Cancel {
        /// The job's number, as p2p status lists it.
        id: u64,
    },
    /// Forget finished jobs (completed, failed, cancelled); running ones stay.
    Clear,
    /// Show this device's name and identity fingerprint (what another device compares
    /// when pairing).
    Id,
    /// Pair with another device: without a code, print one to type there; with the code
    /// the other device printed, join. Both sides then compare fingerprints.
    Pair {
        /// The code the other device's p2p pair printed.
        code: Option<String>,
    },
    /// List the paired devices.
    Devices {
        /// One JSON object per device on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget a paired device here, and tell it to forget this one (if it can be reached
    /// within 10 s).
    Unpair {
        /// Its name, as p2p devices lists it.
        name: String,
    },
    /// Set what happens to files a paired device sends: ask (they wait in p2p inbox) or
    /// auto (accepted without asking). Either way they are saved to "From NAME" in the
    /// download directory; offers past a cap are refused, and the sender is told why. A cap
    /// bounds each offer, not a total over time (a device may send again). A cap left out
    /// is removed.
    Rule {
        /// The device's name, as p2p devices lists it.
        name: String,
        /// ask or auto.
        rule: devices::RuleArg,
        /// Refuse each offer of more files than this.
        #[arg(long, value_name = "N")]
        max_files: Option<u64>,
        /// Refuse each offer larger than this in total, like 500M or 2G (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = devices::parse_size)]
        max_size: Option<u64>,
    },
    /// List the p2pd daemons announced on this LAN (mDNS), for p2p send --nearby.
    Nearby {
        /// One JSON object per device on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List offers from paired and nearby devices waiting for an answer.
    Inbox {
        /// One JSON object per offer on stdout instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Stay, and ask about each offer as it arrives (Ctrl-D or Ctrl-C ends).
        #[arg(long)]
        watch: bool,
    },
    /// Accept an offer waiting in p2p inbox.
    Accept {
        /// The offer's job number, as p2p inbox lists it.
        id: u64,
    },
    /// Decline an offer waiting in p2p inbox; the sender is told.
    Decline {
        /// The offer's job number, as p2p inbox lists it.
        id: u64,
    },
    /// List the 256 words codes are made of (for p2p send --code, or to check a code).
    Words,
    /// Print a shell completion script, e.g. `p2p completions bash > /etc/bash_completion.d/p2p`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (p2p.1 and one per subcommand) into a directory, e.g.
    /// `p2p man ~/.local/share/man/man1`.
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// `p2p --version`: the release and the data-channel protocol it speaks, which is what
/// decides whether two versions can talk.
fn version() -> &'static str {
    let text = format!(
        "{} (protocol {})",
        env!("CARGO_PKG_VERSION"),
        p2pd::rtc::peer::CHANNEL_LABEL
    );
    Box::leak(text.into_boxed_str())
}

fn command() -> clap::Command {
    Args::command().version(version())
}

fn main() -> ExitCode {
    let args = match Args::from_arg_matches(&command().get_matches()) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
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
    let result = runtime.block_on(run(args));
    // A question left unanswered at Ctrl-C still holds a thread reading stdin.
    runtime.shutdown_background();
    match result {
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "p2p", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            write_man_pages(command(), &dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Words => {
            let mut out = std::io::stdout().lock();
            for row in p2pd::rendezvous::code::code_words().chunks(8) {
                writeln!(out, "{}", row.join(" "))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            files,
            name,
            text,
            detach,
            code,
            json,
            manual,
            to,
            nearby,
            qr,
            path,
        } => {
            // A bad word is found before anything is sent to the daemon.
            if let Some(words) = &code {
                Code::with_words(0, words)?;
            }
            let from_stdin = files.iter().any(|f| f.as_os_str() == "-");
            if from_stdin && files.len() > 1 {
                bail!("`-` (stdin) is sent on its own: send the other files in another p2p send");
            }
            if name.is_some() && !from_stdin {
                bail!("--name names what comes from stdin: use it with p2p send -");
            }
            if from_stdin && manual {
                bail!(
                    "with --manual, stdin carries the pasted answer: save the data to a file and send that"
                );
            }
            let mut client = IpcClient::connect(&socket).await?;
            // The daemon keeps stdin's data until the send is over (--detach too).
            let paths = match from_stdin {
                true => vec![spool::from_stdin(&mut client, name.as_deref()).await?],
                false => files
                    .iter()
                    .map(|f| absolute(f))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            };
            let interrupt = Interrupt::catch()?;
            let first = client
                .call(Request::Send {
                    paths,
                    follow: !detach,
                    path: path.policy(),
                    words: code,
                    text,
                    manual,
                    to: to.map(Recipient::Paired).or(nearby.map(Recipient::Nearby)),
                })
                .await?;
            if qr && let ServerFrame::Created(summary) = &first {
                show_qr(&socket, summary.code.as_deref()).await?;
            }
            if detach {
                return detached(first, json);
            }
            let renderer = Renderer::new(json);
            follow(
                &socket,
                client,
                (first, interrupt),
                renderer,
                false,
                Role::Owner,
            )
            .await
        }
        Command::Receive {
            code,
            yes,
            stdout: true,
            path,
            ..
        } => receive::to_stdout(&socket, code, yes, path.policy()).await,
        Command::Receive {
            code,
            output,
            yes,
            json,
            manual,
            stdout: _,
            path,
        } => receive::receive(&socket, code, output, (yes, json, manual), path.policy()).await,
        Command::Status { json } => {
            let mut client = IpcClient::connect(&socket).await?;
            match client.call(Request::List).await? {
                ServerFrame::Jobs(jobs) => {
                    status::print_status(&jobs, json);
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            }
        }
        Command::Watch { id, json } => {
            let mut client = IpcClient::connect(&socket).await?;
            let interrupt = Interrupt::catch()?;
            let first = client.call(Request::Watch { job: id }).await?;
            follow(
                &socket,
                client,
                (first, interrupt),
                Renderer::new(json),
                true,
                Role::Watcher,
            )
            .await
        }
        Command::Id => devices::id(&socket).await,
        Command::Pair { code } => devices::pair(&socket, code).await,
        Command::Devices { json } => devices::devices(&socket, json).await,
        Command::Unpair { name } => devices::unpair(&socket, &name).await,
        Command::Rule {
            name,
            rule,
            max_files,
            max_size,
        } => devices::rule(&socket, name, rule, max_files, max_size).await,
        Command::Inbox { watch: true, .. } => inbox::watch(&socket).await,
        Command::Inbox { json, .. } => inbox::inbox(&socket, json).await,
        Command::Nearby { json } => devices::nearby(&socket, json).await,
        Command::Accept { id } => devices::decide(&socket, id, true).await,
        Command::Decline { id } => devices::decide(&socket, id, false).await,
        Command::Clear => {
            let mut client = IpcClient::connect(&socket).await?;
            match client.call(Request::Clear).await? {
                ServerFrame::Cleared { jobs } => {
                    eprintln!(
                        "Forgot {jobs} finished job{}",
                        if jobs == 1 { "" } else { "s" }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            }
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

/// The page link with `code` in it, as a QR code on stderr (stdout may carry JSON).
async fn show_qr(socket: &Path, code: Option<&str>) -> anyhow::Result<()> {
    let Some(code) = code else { return Ok(()) };
    let mut client = IpcClient::connect(socket).await?;
    let (url, this_machine_only) = match client.call(Request::Page).await? {
        ServerFrame::Page {
            url,
            this_machine_only,
        } => (url, this_machine_only),
        other => return Err(unexpected(other)),
    };
    let link = format!("{url}#receive={code}");
    let qr = qrcode::QrCode::new(link.as_bytes()).context("the link does not fit a QR code")?;
    let drawn = qr
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    let mut err = std::io::stderr().lock();
    writeln!(err, "{drawn}\n{}", escape_controls(&link))?;
    if this_machine_only {
        writeln!(
            err,
            "(p2pd's rendezvous listens on this machine only: another device reaches the page once both use a shared rendezvous, rendezvous = \"wss://…\" in the config)"
        )?;
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Writes `command`'s manual pages into `dir` and names each file written.
pub(crate) fn write_man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}: pass a writable directory", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "1") {
            println!("{}", entry.path().display());
        }
    }
    Ok(())
}

/// `--detach`: the code, and how to find the job again.
fn detached(first: ServerFrame, json: bool) -> anyhow::Result<ExitCode> {
    let ServerFrame::Created(summary) = first else {
        return Err(unexpected(first));
    };
    let info = JobInfo::from_summary(&summary);
    Renderer::new(json).created(&info);
    if !json {
        eprintln!(
            "Job {id} runs in p2pd: p2p watch {id} to follow it, p2p cancel {id} to stop it",
            id = info.id
        );
    }
    Ok(ExitCode::SUCCESS)
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
