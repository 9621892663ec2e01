//! `p2p id`, `p2p pair`, `p2p devices`, `p2p unpair`, `p2p rule`, `p2p inbox`,
//! `p2p accept`, `p2p decline`: this device's identity, the devices paired with it, and
//! what they send.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use indicatif::HumanBytes;
use p2pd::ipc::client::IpcClient;
use p2pd::ipc::messages::{DeviceInfo, Request, Rule, ServerFrame};
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
                    "rule": device.rule.as_str(),
                    "max_files": device.max_files,
                    "max_bytes": device.max_bytes,
                    "reachable": device.reachable,
                    "online": device.online,
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
    let width = name_width(list.iter().map(|d| d.name.as_str()));
    println!(
        "{:<width$}  {:<29}  {:<7}  {:<14}  {:<24}  RULE",
        "NAME", "FINGERPRINT", "ONLINE", "LAST SEEN", "CAPS"
    );
    for device in list {
        let seen = device
            .last_seen_unix
            .map(ago)
            .unwrap_or_else(|| "never".into());
        let online = match device.online {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let rule = if device.reachable {
            device.rule.as_str()
        } else {
            "pair again to send"
        };
        println!(
            "{:<width$}  {:<29}  {online:<7}  {seen:<14}  {:<24}  {rule}",
            escape_controls(&device.name),
            device.fingerprint,
            caps(device)
        );
    }
}

/// The NAME column's width: the longest name, and at least the heading's.
fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(0).max(4)
}

/// "≤ 100 files, ≤ 2.00 GiB", or "-".
fn caps(device: &DeviceInfo) -> String {
    let mut caps = Vec::new();
    if let Some(files) = device.max_files {
        caps.push(format!("≤ {files} files"));
    }
    if let Some(bytes) = device.max_bytes {
        caps.push(format!("≤ {}", HumanBytes(bytes)));
    }
    if caps.is_empty() {
        "-".into()
    } else {
        caps.join(", ")
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
        ServerFrame::Unpaired { told: true } => {
            eprintln!(
                "Unpaired {}: both devices forgot each other",
                escape_controls(name)
            );
            Ok(ExitCode::SUCCESS)
        }
        ServerFrame::Unpaired { told: false } => {
            eprintln!(
                "Unpaired {}: this device forgot it; it could not be told, so run p2p unpair on it too",
                escape_controls(name)
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

/// `p2p rule`'s second argument.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RuleArg {
    Ask,
    Auto,
}

/// A size like `500M`, `2G`, `1.5T` or `4096` (bytes), in powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size: give bytes, or a number with K, M, G or T");
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let number = upper.trim_end_matches('B').trim_end_matches('I');
    let (digits, shift) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 10),
        Some('M') => (&number[..number.len() - 1], 20),
        Some('G') => (&number[..number.len() - 1], 30),
        Some('T') => (&number[..number.len() - 1], 40),
        _ => (number, 0),
    };
    let value: f64 = digits.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

pub async fn rule(
    socket: &Path,
    name: String,
    rule: RuleArg,
    max_files: Option<u64>,
    max_bytes: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let rule = match rule {
        RuleArg::Ask => Rule::Ask,
        RuleArg::Auto => Rule::Auto,
    };
    let mut client = IpcClient::connect(socket).await?;
    let request = Request::Rule {
        name,
        rule,
        max_files,
        max_bytes,
    };
    match client.call(request).await? {
        ServerFrame::Devices(list) => {
            print_table(&list);
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(other)),
    }
}

/// The daemons announced on this LAN.
pub async fn nearby(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    let (enabled, list) = match client.call(Request::Nearby).await? {
        ServerFrame::Nearby { enabled, devices } => (enabled, devices),
        other => return Err(unexpected(other)),
    };
    if !enabled {
        bail!(
            "p2pd does not look for nearby devices (started with --no-lan-discovery, or mDNS could not start: see its log)"
        );
    }
    if json {
        for device in &list {
            println!(
                "{}",
                serde_json::json!({
                    "name": device.name,
                    "id": device.id,
                    "addresses": device.addresses,
                })
            );
        }
    } else if list.is_empty() {
        eprintln!("No p2pd seen on this network yet (announcements take a few seconds)");
    } else {
        let width = name_width(list.iter().map(|d| d.name.as_str()));
        println!("{:<width$}  {:<12}  ADDRESS", "NAME", "ID");
        for device in &list {
            println!(
                "{:<width$}  {:<12}  {}",
                escape_controls(&device.name),
                device.id,
                device.addresses.first().map(String::as_str).unwrap_or("-")
            );
        }
        eprintln!("p2p send --nearby NAME FILE sends to one (or by ID when two share a name)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn decide(socket: &Path, id: u64, accept: bool) -> anyhow::Result<ExitCode> {
    let mut client = IpcClient::connect(socket).await?;
    match client.call(Request::Decide { job: id, accept }).await? {
        ServerFrame::Done if accept => {
            eprintln!("Accepted: p2p watch {id} follows it");
            Ok(ExitCode::SUCCESS)
        }
        ServerFrame::Done => {
            eprintln!("Declined: the sender is told");
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        for bad in ["", "lots", "-1G", "1X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
