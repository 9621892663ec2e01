//! Jobs between paired devices: a send `--to NAME` that waits at the device's mailbox, and
//! the receive job a paired device's arrival at ours starts, handled by that device's
//! rule (ask, or save to `From NAME/` without asking) and refused past its caps.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

use super::jobs::{Job, Jobs, failure, file_infos};
use super::mailbox::Target;
use super::outbox::{self, Waiting};
use super::record::unix_now;
use super::runner::{self, ReceiveMeeting, SendMeeting};
use crate::devices::registry::{Device, Rule};
use crate::ipc::messages::{Direction, ErrorKind, Failure, JobInfo, JobState, PathPolicy};
use crate::rendezvous::Session;
use crate::terminal::{escape_controls, escape_path};
use crate::transfer::names::Limits;
use crate::transfer::source::Sources;

impl Jobs {
    fn paired(
        &self,
        find: impl FnOnce(&crate::devices::registry::Registry) -> Option<Device>,
    ) -> Option<Device> {
        let registry = self
            .context
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        find(&registry)
    }

    /// The paired device called `name`, ready to be sent to.
    pub(super) fn target(&self, name: &str) -> Result<Target, Failure> {
        let device = self.paired(|r| r.find(name).cloned()).ok_or_else(|| {
            failure(
                ErrorKind::NotFound,
                format!(
                    "no paired device is called {}: p2p devices lists them, p2p pair adds one",
                    escape_controls(name)
                ),
            )
        })?;
        let (Some(key), Some(secret)) = (device.key(), device.secret.clone()) else {
            return Err(failure(
                ErrorKind::BadRequest,
                format!(
                    "{} was paired before sends without a code existed: run p2p unpair on both devices, then p2p pair",
                    escape_controls(name)
                ),
            ));
        };
        Ok(Target {
            name: device.name,
            key,
            secret,
            deadline_unix: unix_now().saturating_add(self.context.config.device_wait.as_secs()),
            window: self.context.config.device_wait,
        })
    }

    /// Starts a send to a paired device: it looks for it (`Connecting`), then, if it is not
    /// met within a probe's time, waits (`WaitingForPeer`, with its deadline, kept in the
    /// state directory across restarts) until the device is met.
    pub(super) async fn start_send_to(
        &self,
        target: Target,
        sources: Sources,
        text: Option<String>,
        path: PathPolicy,
    ) -> Result<JobInfo, Failure> {
        let job = self.register(
            Direction::Send,
            JobState::Connecting,
            None,
            file_infos(&sources.manifest),
        );
        let id = job.info.borrow().id;
        let waiting = Waiting::new(
            id,
            &target.key,
            (target.deadline_unix, target.window),
            path,
            (&sources, text.clone()),
        );
        let dir = self.context.config.state_dir.clone();
        let saved = tokio::task::spawn_blocking(move || outbox::save(&dir, &waiting)).await;
        if !matches!(saved, Ok(Ok(()))) {
            let refused = failure(
                ErrorKind::Io,
                "cannot record the send in the state directory: check its space and permissions",
            );
            job.fail(refused.clone());
            return Err(refused);
        }
        Ok(self.spawn_send_to(job, target, sources, text, path))
    }

    fn spawn_send_to(
        &self,
        job: Arc<Job>,
        target: Target,
        sources: Sources,
        text: Option<String>,
        path: PathPolicy,
    ) -> JobInfo {
        job.set_device(&target.name, Some(target.deadline_unix));
        job.info
            .send_modify(|info| info.skipped = sources.manifest.skipped.clone());
        let info = job.info.borrow().clone();
        self.tracker.spawn(
            runner::run_send(
                job,
                self.context.clone(),
                SendMeeting::Device(target),
                (sources, text),
                path,
            )
            .instrument(tracing::info_span!("job", id = info.id, dir = "send")),
        );
        info
    }

    /// Starts again every send that was waiting for a paired device when the daemon
    /// stopped; one whose device is no longer paired ends, saying so.
    pub(super) async fn restore_outbox(&self) {
        let dir = self.context.config.state_dir.clone();
        let found = tokio::task::spawn_blocking(move || outbox::load_all(&dir))
            .await
            .unwrap_or_default();
        for waiting in found {
            let job = self.register_restored(
                waiting.job_id,
                Direction::Send,
                JobState::WaitingForPeer,
                file_infos(&waiting.manifest),
            );
            let device = waiting
                .key()
                .and_then(|key| self.paired(|r| r.find_key(&key).cloned()));
            let target = device.and_then(|d| {
                Some(Target {
                    key: d.key()?,
                    secret: d.secret.clone()?,
                    name: d.name,
                    deadline_unix: waiting.deadline_unix,
                    window: std::time::Duration::from_secs(waiting.window_secs),
                })
            });
            match target {
                Some(target) => {
                    let sources = waiting.sources();
                    self.spawn_send_to(job, target, sources, waiting.text, waiting.path);
                }
                None => {
                    job.fail(failure(
                        ErrorKind::NotFound,
                        "the device this send waited for is no longer paired: nothing was sent",
                    ));
                    let dir = self.context.config.state_dir.clone();
                    let id = waiting.job_id;
                    let _ = tokio::task::spawn_blocking(move || outbox::remove(&dir, id)).await;
                }
            }
        }
    }

    /// Starts the receive job of a paired device met at our mailbox, its session proven.
    pub async fn start_inbound(&self, mut session: Session, key: [u8; 32]) -> Result<(), Failure> {
        self.refuse_if_stopping()?;
        let device = self
            .paired(|r| r.find_key(&key).cloned())
            .ok_or_else(|| failure(ErrorKind::NotFound, "the device is no longer paired"))?;
        let base = self.download_dir(None)?;
        let name = device.name.clone();
        let made = tokio::task::spawn_blocking(move || from_folder(&base, &name))
            .await
            .map_err(|_| failure(ErrorKind::Io, "making the device's folder stopped"))
            .and_then(|made| made);
        let dir = match made {
            Ok(dir) => dir,
            Err(local) => {
                // The sender hears that this side cannot take it (it used to hear "the
                // other side went away"), without this machine's paths (issue #23).
                let _ = crate::rtc::refuse(&mut session, REFUSED_LOCALLY).await;
                session.close().await;
                return Err(local);
            }
        };
        let path = self.resolve_path(PathPolicy::Default)?;
        let limits = capped(self.context.config.limits, &device);
        let job: Arc<Job> =
            self.register(Direction::Receive, JobState::Negotiating, None, Vec::new());
        job.set_device(&device.name, None);
        job.info
            .send_modify(|info| info.destination = Some(dir.clone()));
        let id = job.info.borrow().id;
        self.tracker.spawn(
            runner::run_receive(
                job,
                self.context.clone(),
                ReceiveMeeting::Met(Box::new(session)),
                (dir, limits),
                device.rule == Rule::Auto,
                path,
            )
            .instrument(tracing::info_span!("job", id, dir = "receive")),
        );
        Ok(())
    }
}

/// What a sending device hears when this side cannot make its `From NAME` folder; this
/// side's person sees the cause (with its path) in the log.
const REFUSED_LOCALLY: &str = "the receiving device cannot save into its folder for files from this device (a problem on that machine: its log says which)";

/// The daemon's limits, lowered by the device's caps.
fn capped(limits: Limits, device: &Device) -> Limits {
    let files = device
        .max_files
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    Limits {
        max_files: limits.max_files.min(files),
        max_total_bytes: limits
            .max_total_bytes
            .min(device.max_bytes.unwrap_or(u64::MAX)),
        ..limits
    }
}

/// `From NAME/` in the download directory, made if missing. A link or a file in its place
/// is refused rather than followed or replaced.
fn from_folder(base: &std::path::Path, name: &str) -> Result<PathBuf, Failure> {
    let dir = base.join(format!("From {name}"));
    match std::fs::create_dir(&dir) {
        Ok(()) => return Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(failure(
                ErrorKind::Io,
                format!("cannot create {}: {e}", escape_path(&dir)),
            ));
        }
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        _ => Err(failure(
            ErrorKind::Io,
            format!(
                "{} is not a folder (a link or a file is in its place): move it away to receive from this device",
                escape_path(&dir)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(max_files: Option<u64>, max_bytes: Option<u64>) -> Device {
        Device {
            name: "laptop".into(),
            public_key: hex::encode([1u8; 32]),
            paired_unix: 0,
            last_seen_unix: None,
            secret: None,
            rule: Rule::Auto,
            max_files,
            max_bytes,
        }
    }

    #[test]
    fn a_devices_caps_only_ever_lower_the_daemons_limits() {
        let daemon = Limits {
            max_files: 100,
            max_total_bytes: 1000,
            max_file_bytes: 10,
        };
        assert_eq!(capped(daemon, &device(None, None)), daemon);
        let lowered = capped(daemon, &device(Some(3), Some(500)));
        assert_eq!((lowered.max_files, lowered.max_total_bytes), (3, 500));
        let higher = capped(daemon, &device(Some(1_000_000), Some(u64::MAX)));
        assert_eq!(higher, daemon);
    }

    #[test]
    fn the_from_folder_is_made_once_and_never_a_link() {
        let base = tempfile::tempdir().unwrap();
        let made = from_folder(base.path(), "laptop").unwrap();
        assert_eq!(made, base.path().join("From laptop"));
        assert!(made.is_dir());
        assert_eq!(from_folder(base.path(), "laptop").unwrap(), made);
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), base.path().join("From phone")).unwrap();
        let refused = from_folder(base.path(), "phone").unwrap_err();
        assert!(
            refused.message.contains("not a folder"),
            "{}",
            refused.message
        );
    }
}
