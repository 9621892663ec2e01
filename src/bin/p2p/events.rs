//! `--json`: the events one update of a followed job makes, in docs/JSON.md's order.
//! Pure, so the order is tested.

use p2pd::ipc::messages::{JobInfo, JobState};
use serde_json::json;

use crate::render::state_name;

/// The JSON lines one update of a job makes (pure, so the order can be tested).
pub fn json_events(
    previous: Option<&JobInfo>,
    info: &JobInfo,
    state_changed: bool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut emit = |event: serde_json::Value| out.push(event);
    {
        let state_event = || {
            let mut event =
                json!({"event": "state", "job": info.id, "state": state_name(info.state)});
            if let Some(resume) = &info.resume {
                event["reason"] = json!(resume.reason);
                event["resume_deadline"] = json!(resume.deadline_unix);
            }
            if let Some(deadline) = info.wait_deadline_unix {
                event["wait_deadline"] = json!(deadline);
            }
            event
        };
        let final_state = info.state.is_final();
        if state_changed && !final_state {
            emit(state_event());
        }
        if let (Some(route), None) = (&info.route, previous.and_then(|p| p.route.as_ref())) {
            emit(
                json!({"event": "route", "job": info.id, "relayed": route.relayed, "path": route.description}),
            );
        }
        if let (Some(text), true) = (&info.text, previous.is_none_or(|p| p.text.is_none())) {
            emit(json!({"event": "text", "job": info.id, "text": text}));
        }
        let files_appeared =
            previous.map(|p| p.files.is_empty()).unwrap_or(true) && !info.files.is_empty();
        if files_appeared {
            let files: Vec<_> = info
                .files
                .iter()
                .map(|f| json!({"name": f.name, "size": f.size}))
                .collect();
            emit(
                json!({"event": "files", "job": info.id, "files": files, "bytes_total": info.bytes_total, "skipped": info.skipped}),
            );
        }
        if previous.map(|p| p.bytes_done) != Some(info.bytes_done) && info.bytes_done > 0 {
            emit(
                json!({"event": "progress", "job": info.id, "bytes_done": info.bytes_done, "bytes_total": info.bytes_total, "rate": info.rate}),
            );
        }
        for (index, file) in info.files.iter().enumerate() {
            let was = previous
                .and_then(|p| p.files.get(index))
                .map(|f| f.verified)
                .unwrap_or(false);
            if file.verified && !was {
                emit(
                    json!({"event": "file_verified", "job": info.id, "name": file.name, "size": file.size, "path": file.saved_as}),
                );
            }
        }
        let folders_before = previous.map_or(0, |p| p.saved_folders.len());
        for folder in info.saved_folders.iter().skip(folders_before) {
            emit(json!({"event": "folder_saved", "job": info.id, "path": folder}));
        }
        if state_changed && final_state {
            emit(state_event());
        }
        match (info.state, state_changed) {
            (JobState::Completed, true) => emit(json!({"event": "completed", "job": info.id})),
            (JobState::Failed | JobState::Cancelled, true) => {
                let (kind, message) = info
                    .failure
                    .as_ref()
                    .map(|f| (format!("{:?}", f.kind), f.message.clone()))
                    .unwrap_or_default();
                emit(json!({"event": "failed", "job": info.id, "kind": kind, "message": message}));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd::ipc::messages::FileInfo;

    fn names(events: &[serde_json::Value]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect()
    }

    /// The last file verified, its folder in place and the job completed in one update:
    /// the final state after the file and folder events, `completed` last.
    #[test]
    fn a_final_state_comes_after_the_updates_files_and_completed_last() {
        let file = |verified| FileInfo {
            name: "tree/a.bin".into(),
            size: 1,
            verified,
            saved_as: None,
        };
        let before = JobInfo {
            state: JobState::Transferring,
            files: vec![file(false)],
            bytes_done: 1,
            ..JobInfo::default()
        };
        let after = JobInfo {
            state: JobState::Completed,
            files: vec![file(true)],
            bytes_done: 1,
            saved_folders: vec!["/d/tree".into()],
            ..JobInfo::default()
        };
        let events = json_events(Some(&before), &after, true);
        assert_eq!(
            names(&events),
            ["file_verified", "folder_saved", "state", "completed"]
        );
        // A state that is not final still comes first.
        let waiting = JobInfo {
            state: JobState::AwaitingApproval,
            ..before.clone()
        };
        let events = json_events(Some(&before), &waiting, true);
        assert_eq!(names(&events), ["state"]);
    }
}
