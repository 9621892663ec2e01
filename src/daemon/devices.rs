//! The paired-device requests of the control socket: the list, a device's rule, and
//! unpairing (which tells the device when it can be reached).

use std::sync::Arc;

use super::jobs::Jobs;
use super::mailbox::{self, Target, UNPAIR_NOTICE_LIMIT};
use super::record::unix_now;
use crate::devices::registry::{Device, Rule};
use crate::ipc::messages::{DeviceInfo, ErrorKind, ServerFrame};
use crate::terminal::escape_controls;

fn info(d: &Device) -> DeviceInfo {
    DeviceInfo {
        online: None,
        name: escape_controls(&d.name),
        fingerprint: d.fingerprint(),
        paired_unix: d.paired_unix,
        last_seen_unix: d.last_seen_unix,
        rule: d.rule,
        max_files: d.max_files,
        max_bytes: d.max_bytes,
        reachable: d.secret.is_some(),
    }
}

fn not_found() -> ServerFrame {
    ServerFrame::Error {
        kind: ErrorKind::NotFound,
        message: "no paired device has that name: p2p devices lists them".into(),
    }
}

fn not_saved() -> ServerFrame {
    ServerFrame::Error {
        kind: ErrorKind::Io,
        message: "cannot save the paired devices in the state directory".into(),
    }
}

/// The paired devices, each asked at its mailbox whether it is online (all at once,
/// within [`mailbox::PROBE_LIMIT`]).
pub async fn list(jobs: &Jobs) -> ServerFrame {
    let devices: Vec<Device> = {
        let registry = jobs
            .context
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        registry.list().to_vec()
    };
    let probes = devices.iter().map(|device| async move {
        let target = target(device, mailbox::PROBE_LIMIT)?;
        Some(mailbox::probe(&jobs.context, &target).await)
    });
    let online = futures_util::future::join_all(probes).await;
    // Read again: a probe that got through updated when each device was last seen.
    let registry = jobs
        .context
        .devices
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let list = devices
        .iter()
        .zip(online)
        .map(|(device, online)| {
            let current = registry.find_key(&device.key().unwrap_or_default());
            DeviceInfo {
                online,
                ..info(current.unwrap_or(device))
            }
        })
        .collect();
    ServerFrame::Devices(list)
}

/// A device to reach within `limit`; `None` for a pairing without a secret.
fn target(device: &Device, limit: std::time::Duration) -> Option<Target> {
    Some(Target {
        name: device.name.clone(),
        key: device.key()?,
        secret: device.secret.clone()?,
        deadline_unix: unix_now().saturating_add(limit.as_secs()),
        window: limit,
    })
}

/// Sets a device's rule and caps; answers with that device alone.
pub async fn rule(
    jobs: &Jobs,
    name: String,
    rule: Rule,
    max_files: Option<u64>,
    max_bytes: Option<u64>,
) -> ServerFrame {
    let devices = jobs.context.devices.clone();
    let changed = tokio::task::spawn_blocking(move || {
        let mut registry = devices.lock().unwrap_or_else(|p| p.into_inner());
        registry.set_rule(&name, rule, max_files, max_bytes)
    })
    .await;
    match changed {
        Ok(Ok(Some(device))) => ServerFrame::Devices(vec![info(&device)]),
        Ok(Ok(None)) => not_found(),
        _ => not_saved(),
    }
}

/// Forgets a device here, stops listening for it, then tells it (within
/// [`UNPAIR_NOTICE_LIMIT`]) so it forgets this one too.
pub async fn unpair(jobs: &Arc<Jobs>, name: String) -> ServerFrame {
    let devices = jobs.context.devices.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let mut registry = devices.lock().unwrap_or_else(|p| p.into_inner());
        registry.remove(&name)
    })
    .await;
    let device = match removed {
        Ok(Ok(Some(device))) => device,
        Ok(Ok(None)) => return not_found(),
        _ => return not_saved(),
    };
    mailbox::sync(jobs);
    let Some(target) = target(&device, UNPAIR_NOTICE_LIMIT) else {
        return ServerFrame::Unpaired { told: false };
    };
    ServerFrame::Unpaired {
        told: mailbox::tell_unpaired(&jobs.context, &target).await,
    }
}
