//! `p2p status`: every job of the daemon, one line (or one JSON object) each.

use indicatif::HumanBytes;
use p2pd::ipc::messages::{Direction, JobSummary};
use serde_json::json;

use crate::render::{emit, say_out, state_name, time_left};

/// The rate a job's row shows: while it moves, the daemon's (the last seconds); once it
/// is over, its average over the time data moved (a short job finished between two
/// reports used to show 0 B/s).
fn shown_rate(job: &JobSummary) -> u64 {
    if job.state.is_final() && job.active_ms > 0 {
        job.active_bytes.saturating_mul(1000) / job.active_ms
    } else {
        job.rate
    }
}

/// FILES and DONE/TOTAL: a message is "text", not "0 files 0 B/0 B".
fn what(job: &JobSummary) -> (String, String) {
    let is_text =
        job.files == 0 && job.bytes_total == 0 && (job.text.is_some() || job.message_offered);
    if is_text {
        return ("text".to_owned(), "-".to_owned());
    }
    (
        job.files.to_string(),
        format!(
            "{}/{}",
            HumanBytes(job.bytes_done),
            HumanBytes(job.bytes_total)
        ),
    )
}

pub fn print_status(jobs: &[JobSummary], json: bool) {
    if json {
        for job in jobs {
            emit(json!({
                "job": job.id,
                "direction": match job.direction { Direction::Send => "send", Direction::Receive => "receive" },
                "state": state_name(job.state),
                "files": job.files,
                "bytes_done": job.bytes_done,
                "bytes_total": job.bytes_total,
                "rate": shown_rate(job),
                "code": job.code,
                "error": job.failure.as_ref().map(|f| f.message.clone()),
                "route": job.route.as_ref().map(|r| r.description.clone()),
                "relayed": job.route.as_ref().map(|r| r.relayed),
                "resume_reason": job.resume.as_ref().map(|r| r.reason.clone()),
                "resume_deadline": job.resume.as_ref().map(|r| r.deadline_unix),
                "device": job.device,
                "wait_deadline": job.wait_deadline_unix,
            }));
        }
        return;
    }
    if jobs.is_empty() {
        say_out("no jobs");
        return;
    }
    say_out(&format!(
        "{:>4}  {:<7}  {:<17}  {:>5}  {:>21}  {:>10}  {:<24}  CODE / ERROR",
        "ID", "DIR", "STATE", "FILES", "DONE/TOTAL", "RATE", "ROUTE"
    ));
    for job in jobs {
        let detail = job
            .failure
            .as_ref()
            .map(|f| f.message.clone())
            .or_else(|| {
                job.resume.as_ref().map(|r| {
                    format!(
                        "resumes by itself ({}), {}",
                        r.reason,
                        time_left(r.deadline_unix)
                    )
                })
            })
            .or_else(|| job.code.clone().filter(|_| !job.state.is_final()))
            .or_else(|| {
                job.device.as_ref().map(|device| match job.direction {
                    Direction::Send => match job.wait_deadline_unix {
                        Some(deadline) => {
                            format!("to {device}, waiting for it ({})", time_left(deadline))
                        }
                        None => format!("to {device}"),
                    },
                    Direction::Receive => format!("from {device}"),
                })
            })
            .unwrap_or_default();
        let (files, done) = what(job);
        say_out(&format!(
            "{:>4}  {:<7}  {:<17}  {:>5}  {:>21}  {:>10}  {:<24}  {}",
            job.id,
            match job.direction {
                Direction::Send => "send",
                Direction::Receive => "receive",
            },
            state_name(job.state),
            files,
            done,
            format!("{}/s", HumanBytes(shown_rate(job))),
            job.route
                .as_ref()
                .map(|r| r.description.as_str())
                .unwrap_or("-"),
            detail
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd::ipc::messages::JobState;

    #[test]
    fn a_finished_job_shows_its_average_and_a_message_shows_as_text() {
        let done = p2pd::ipc::messages::JobInfo {
            state: JobState::Completed,
            bytes_done: 13,
            bytes_total: 13,
            rate: 0,
            active_ms: 4,
            active_bytes: 13,
            files: vec![p2pd::ipc::messages::FileInfo {
                name: "a".into(),
                size: 13,
                verified: true,
                saved_as: None,
            }],
            ..Default::default()
        }
        .summary();
        assert_eq!(shown_rate(&done), 3250);
        let moving = JobSummary {
            state: JobState::Transferring,
            rate: 99,
            ..done.clone()
        };
        assert_eq!(shown_rate(&moving), 99);
        let text = JobSummary {
            files: 0,
            bytes_done: 0,
            bytes_total: 0,
            text: Some("hi".into()),
            ..done.clone()
        };
        assert_eq!(what(&text), ("text".to_owned(), "-".to_owned()));
        assert_eq!(what(&done).0, "1");
    }
}
