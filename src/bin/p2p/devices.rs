//! `p2p id`, `p2p pair`, `p2p devices`, `p2p unpair`: this device's identity and the
//! devices paired with it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{DeviceInfo, Request, ServerFrame};
use p2pd::terminal::escape_controls;

use crate::follow::unexpected;

pub async fn id(socket: &Path) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    match client.call(Request::Identity).await? {
        ServerFrame::Identity { name, fingerprint } => {
            println!("{}  {fingerprint}", escape_controls(&name));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

pub async fn devices(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    let list = match client.call(Request::Devices).await? {
        ServerFrame::Devices(list) => list,
        other => return Err(unexpected(other)),
    };
    if json {
        for device in &list {
            println!(
                "{}",
                serde_json::json!({
                    "name": device.name,
                    "fingerprint": device.fingerprint,
                    "paired_unix": device.paired_unix,
                    "last_seen_unix": device.last_seen_unix,
                })
            );
        }
    } else if list.is_empty() {
        eprintln!("No paired devices: pair one with p2p pair");
    } else {
        print_table(&list);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(list: &[DeviceInfo]) {
    let width = list
        .iter()
        .map(|d| d.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  {:<29}  LAST SEEN", "NAME", "FINGERPRINT");
    for device in list {
        let seen = device
            .last_seen_unix
            .map(ago)
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<width$}  {:<29}  {seen}",
            escape_controls(&device.name),
            device.fingerprint
        );
    }
}

/// "3 minutes ago", "2 days ago".
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(unix);
    let secs = now.saturating_sub(unix);
    let (n, unit) = match secs {
        0..60 => return "just now".into(),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub async fn unpair(socket: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    match client
        .call(Request::Unpair {
            name: name.to_owned(),
        })
        .await?
    {
        ServerFrame::Done => {
            eprintln!(
                "Unpaired {}: this device no longer knows it (run p2p unpair on the other device too)",
                escape_controls(name)
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

/// The ceremony: a code (or the one given), then both people compare what they see.
pub async fn pair(socket: &Path, code: Option<String>) -> anyhow::Result<ExitCode> {
    if !std::io::stdin().is_terminal() {
        bail!("pairing needs a person to compare fingerprints: run p2p pair on a terminal");
    }
    let mut client = IpcClient::connect(socket).await?;
    client.send(Request::Pair { code }).await?;
    loop {
        let frame = client
            .next()
            .await?
            .ok_or_else(|| anyhow!("p2pd stopped during the pairing"))?;
        match frame {
            ServerFrame::PairCode { code } => {
                let code = escape_controls(&code);
                println!("Pairing code: {code}\nOn the other device run: p2p pair {code}");
            }
            ServerFrame::PairPeer { name, fingerprint } => {
                eprint!(
                    "Pair with “{}”, fingerprint {fingerprint}? It must match what p2p id shows on that device. [y/N] ",
                    escape_controls(&name)
                );
                std::io::stderr().flush().ok();
                let accept = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).ok();
                    matches!(line.trim().to_lowercase().as_str(), "y" | "yes")
                })
                .await?;
                client.send(Request::Confirm { accept }).await?;
            }
            ServerFrame::Paired { name, fingerprint } => {
                eprintln!("Paired with “{}” ({fingerprint})", escape_controls(&name));
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(unexpected(other)),
        }
    }
}
