//! `p2p receive`: with the sender's code (asked for when not given), or with a pasted
//! offer (`--manual`); then following the job, asking before anything is accepted.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{PathPolicy, Request};
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
        // Asking keeps the code out of the process list and shell history.
        None if interactive => prompt("Code: ")?,
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
