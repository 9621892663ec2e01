//! Everything the CLI draws: progress bars on stderr, results on stdout, or JSON lines.

use std::io::Write;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bars::Bars;
use p2pd::ipc::messages::{Direction, JobInfo, JobState};
use p2pd::terminal::{escape_controls, escape_for_terminal, json_line};
use serde_json::json;

/// Every human line goes through here: names are escaped where they are formatted, and
/// this catches anything else that came from a peer, a file name or the daemon.
macro_rules! say {
    (out, $($arg:tt)*) => { println!("{}", escape_controls(&format!($($arg)*))) };
    (err, $($arg:tt)*) => { eprintln!("{}", escape_controls(&format!($($arg)*))) };
}

pub struct Renderer {
    json: bool,
    bars: Option<Bars>,
    last: Option<JobInfo>,
    /// "Waiting for the receiver to accept…", shown only while it is true.
    waiting: Option<ProgressBar>,
    /// `Saved` lines while bars are drawn, printed below them when they are done.
    saved_at_end: Vec<String>,
    /// `p2p receive --stdout`: stdout carries the file, so lines go to stderr; `yes` when
    /// a single-file offer is taken without asking.
    stdout_data: Option<bool>,
}

/// "left out 2 paths (symlinks and special files are not sent): a, b" for the sender's
/// left-out paths.
fn skipped_line(skipped: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<String> = skipped
        .iter()
        .take(SHOWN)
        .map(|s| escape_for_terminal(s))
        .collect();
    if skipped.len() > SHOWN {
        names.push(format!("and {} more", skipped.len() - SHOWN));
    }
    format!(
        "left out {} (symlinks and special files are not sent): {}",
        plural(skipped.len(), "path"),
        names.join(", ")
    )
}

/// "1 file", "3 files".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `dir` with the home directory written as `~`, as people type it.
fn home_relative(dir: &std::path::Path) -> String {
    match std::env::var_os("HOME").map(std::path::PathBuf::from) {
        Some(home) if !home.as_os_str().is_empty() => match dir.strip_prefix(&home) {
            Ok(rest) if rest.as_os_str().is_empty() => "~".to_owned(),
            Ok(rest) => format!("~/{}", rest.display()),
            Err(_) => dir.display().to_string(),
        },
        _ => dir.display().to_string(),
    }
}

pub(crate) fn time_left(deadline_unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let left = deadline_unix.saturating_sub(now);
    format!("{}h{:02}m left", left / 3600, left % 3600 / 60)
}

/// One line on stdout, escaped.
pub(crate) fn say_out(line: &str) {
    say!(out, "{line}");
}

pub(crate) fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json_line(&value));
    let _ = out.flush();
}

pub(crate) fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Connecting => "connecting",
        JobState::WaitingForPeer => "waiting_for_peer",
        JobState::Negotiating => "negotiating",
        JobState::Comparing => "comparing",
        JobState::AwaitingApproval => "awaiting_approval",
        JobState::Transferring => "transferring",
        JobState::WaitingToResume => "waiting_to_resume",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

impl Renderer {
    pub fn new(json: bool) -> Renderer {
        Renderer {
            json,
            bars: None,
            last: None,
            waiting: None,
            saved_at_end: Vec::new(),
            stdout_data: None,
        }
    }

    /// For `p2p receive --stdout`: stdout is the file's, and only an offer of one file is
    /// taken (at once with `yes`).
    pub fn with_stdout_data(mut self, yes: bool) -> Renderer {
        self.stdout_data = Some(yes);
        self
    }

    /// Why this offer cannot be taken as asked, if it cannot.
    pub fn refusal(&self, info: &JobInfo) -> Option<String> {
        self.stdout_data?;
        let one_file = info.files.len() == 1 && !info.files[0].name.contains('/');
        (!one_file && !info.message_offered).then(|| {
            format!(
                "--stdout takes one file, and this offer holds {} or a folder: receive it without --stdout",
                plural(info.files.len(), "file")
            )
        })
    }

    /// Whether the offer is taken without asking (`--stdout --yes`).
    pub fn takes_without_asking(&self) -> bool {
        self.stdout_data == Some(true)
    }

    /// A line about a saved file or folder: stdout, unless stdout carries the data.
    fn say_saved(&self, line: &str) {
        match self.stdout_data {
            Some(_) => say!(err, "{line}"),
            None => say!(out, "{line}"),
        }
    }

    pub fn created(&mut self, info: &JobInfo) {
        if self.json {
            let mut event = json!({"event": "created", "job": info.id, "direction": match info.direction { Direction::Send => "send", Direction::Receive => "receive" }});
            if let Some(code) = &info.code {
                event["code"] = json!(code);
            }
            if let Some(dir) = &info.destination {
                event["destination"] = json!(dir.to_string_lossy());
            }
            if let Some(device) = &info.device {
                event["device"] = json!(device);
            }
            emit(event);
        } else if let Some(code) = &info.code {
            let mut out = std::io::stdout().lock();
            let code = escape_controls(code);
            let _ = writeln!(
                out,
                "Code: {code}\nOn the other machine run: p2p receive {code}"
            );
            let _ = out.flush();
        }
        self.update(info);
    }

    pub fn update(&mut self, info: &JobInfo) {
        let previous = self.last.replace(info.clone());
        let state_changed = previous.as_ref().map(|p| p.state) != Some(info.state);
        if self.json {
            self.json_update(previous.as_ref(), info, state_changed);
            return;
        }
        let skipped_appeared = previous.as_ref().is_none_or(|p| p.skipped.is_empty());
        if skipped_appeared && !info.skipped.is_empty() && info.direction == Direction::Send {
            let line = skipped_line(&info.skipped);
            say!(err, "L{}", line.strip_prefix('l').unwrap_or(&line));
        }
        if state_changed
            && info.state == JobState::WaitingToResume
            && let Some(resume) = &info.resume
        {
            let line = format!(
                "Interrupted ({}): p2pd resumes by itself when the other side is back, nothing to do ({})",
                resume.reason,
                time_left(resume.deadline_unix)
            );
            match &self.bars {
                Some(bars) => bars.multi.suspend(|| say!(err, "{line}")),
                None => say!(err, "{line}"),
            }
        }
        let route_appeared = previous.as_ref().and_then(|p| p.route.as_ref()).is_none();
        if let (Some(route), true) = (&info.route, route_appeared) {
            say!(err, "Connected: {}", route.description);
        }
        let text_arrived = previous.as_ref().is_none_or(|p| p.text.is_none());
        if let (Some(text), true, Direction::Receive) = (&info.text, text_arrived, info.direction) {
            // The sender's words, line by line, each escaped: they reach a terminal.
            for line in text.lines() {
                say!(out, "{line}");
            }
        }
        if state_changed
            && info.state == JobState::WaitingForPeer
            && let (Some(device), Some(deadline)) = (&info.device, info.wait_deadline_unix)
        {
            say!(
                err,
                "Waiting for {device} to come online ({}); Ctrl-C cancels",
                time_left(deadline)
            );
        }
        if state_changed
            && info.state == JobState::AwaitingApproval
            && info.direction == Direction::Send
        {
            // A line that goes once the receiver answers (it used to stay, also with -y).
            let waiting = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            waiting.set_message("Waiting for the receiver to accept…");
            waiting.tick();
            self.waiting = Some(waiting);
        }
        if info.state != JobState::AwaitingApproval
            && let Some(waiting) = self.waiting.take()
        {
            waiting.finish_and_clear();
        }
        if state_changed
            && previous.as_ref().map(|p| p.state) == Some(JobState::WaitingToResume)
            && matches!(info.state, JobState::Negotiating | JobState::Transferring)
        {
            let line = format!(
                "Resumed: continuing from {} of {}",
                HumanBytes(info.bytes_done),
                HumanBytes(info.bytes_total)
            );
            match &self.bars {
                Some(bars) => bars.multi.suspend(|| say!(err, "{line}")),
                None => say!(err, "{line}"),
            }
        }
        if !info.files.is_empty()
            && self.bars.is_none()
            && matches!(info.state, JobState::Transferring | JobState::Completed)
        {
            self.bars = Some(Bars::new(info));
        }
        if let Some(bars) = &self.bars {
            bars.show(info);
        }
        let folders_before = previous.as_ref().map_or(0, |p| p.saved_folders.len());
        for folder in info.saved_folders.iter().skip(folders_before) {
            let line = format!(
                "Saved {}",
                escape_for_terminal(&folder.display().to_string())
            );
            self.saved(line);
        }
        for (index, file) in info.files.iter().enumerate() {
            let was_saved = previous
                .as_ref()
                .and_then(|p| p.files.get(index))
                .and_then(|f| f.saved_as.as_ref())
                .is_some();
            if let (Some(path), false) = (&file.saved_as, was_saved) {
                let line = format!("Saved {}", escape_for_terminal(&path.display().to_string()));
                self.saved(line);
            }
        }
    }

    /// A `Saved` line: at once without bars; below the bars, once they are done, with
    /// them (printed above moving bars, the last one landed above the final bar).
    fn saved(&mut self, line: String) {
        match &self.bars {
            Some(_) => self.saved_at_end.push(line),
            None => self.say_saved(&line),
        }
    }

    /// One line per change, in the order docs/JSON.md states: a final state comes after
    /// the file and folder events of the same update, and `completed` or `failed` last.
    fn json_update(&self, previous: Option<&JobInfo>, info: &JobInfo, state_changed: bool) {
        for event in crate::events::json_events(previous, info, state_changed) {
            emit(event);
        }
    }
}

impl Renderer {
    /// Lists the offer and asks "Accept? [y/N]"; the caller reads the answer.
    /// Manual signaling: this side's description on stdout (so it can be piped), what
    /// to do with it on stderr.
    pub fn show_signal(&mut self, info: &JobInfo) -> anyhow::Result<()> {
        let Some(blob) = &info.signal else {
            return Ok(());
        };
        let mut err = std::io::stderr().lock();
        match info.direction {
            Direction::Send => writeln!(
                err,
                "Give this offer to the receiver (p2p receive --manual pastes it):"
            )?,
            Direction::Receive => {
                writeln!(err, "Give this answer to the sender, which waits for it:")?
            }
        }
        err.flush()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", escape_controls(blob))?;
        out.flush()?;
        if info.direction == Direction::Send {
            writeln!(
                err,
                "Paste the receiver's answer (one line), then press Enter:"
            )?;
        }
        Ok(())
    }

    /// Manual signaling: the string both screens must show.
    pub fn show_sas(&mut self, info: &JobInfo) -> anyhow::Result<()> {
        if let Some(sas) = &info.sas {
            let mut err = std::io::stderr().lock();
            writeln!(
                err,
                "Authentication string: {} (the other side must show the same; if it does not, someone is in between: press Ctrl-C)",
                escape_controls(sas)
            )?;
        }
        Ok(())
    }

    /// Manual signaling: the sender's question before anything is offered, the receiver's
    /// before a message is shown.
    pub fn ask_same_sas(&mut self, info: &JobInfo) -> anyhow::Result<()> {
        let sas = info.sas.as_deref().map(escape_controls).unwrap_or_default();
        let mut err = std::io::stderr().lock();
        match info.direction {
            Direction::Send => write!(
                err,
                "Does the receiver's screen show {sas}? Nothing is sent before you say yes. [y/N] "
            )?,
            Direction::Receive => write!(
                err,
                "The sender sent a message. Does the sender's screen show {sas}? The message is shown only after you say yes. [y/N] "
            )?,
        }
        err.flush()?;
        Ok(())
    }

    pub fn show_offer(&mut self, info: &JobInfo) -> anyhow::Result<()> {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "The sender offers {}, {} in all:",
            plural(info.files.len(), "file"),
            HumanBytes(info.bytes_total)
        )?;
        const LISTED: usize = 20;
        for file in info.files.iter().take(LISTED) {
            writeln!(
                err,
                "  {}  {}",
                escape_for_terminal(&file.name),
                HumanBytes(file.size)
            )?;
        }
        if info.files.len() > LISTED {
            writeln!(err, "  … and {} more", info.files.len() - LISTED)?;
        }
        if !info.skipped.is_empty() {
            writeln!(err, "The sender {}", skipped_line(&info.skipped))?;
        }
        if let Some(dir) = &info.destination {
            writeln!(
                err,
                "Saving to {} (the daemon's download directory unless -o DIR was given; an existing name gets a number)",
                escape_for_terminal(&home_relative(dir))
            )?;
        }
        if let Some(sas) = &info.sas {
            writeln!(
                err,
                "Accept only if the sender's screen shows the authentication string {}.",
                escape_controls(sas)
            )?;
        }
        write!(err, "Accept? [y/N] ")?;
        err.flush()?;
        Ok(())
    }

    /// Ctrl-C: the bars and the waiting line go without being drawn again; what was
    /// saved before is still said.
    pub fn interrupted(&mut self) {
        self.clear_and_say_saved();
    }

    /// The waiting line and the bars go; what the bars showed is said by the lines that
    /// follow (each file saved, then the summary), in that order: a bar left drawn had the
    /// terminal's cursor at its end, where the next line landed.
    fn clear_and_say_saved(&mut self) {
        if let Some(waiting) = self.waiting.take() {
            waiting.finish_and_clear();
        }
        if let Some(bars) = self.bars.take() {
            bars.clear();
        }
        for line in std::mem::take(&mut self.saved_at_end) {
            self.say_saved(&line);
        }
    }

    pub fn finish(&mut self) {
        self.clear_and_say_saved();
        if let Some(info) = self
            .last
            .as_ref()
            .filter(|i| i.state == JobState::Completed)
            && !self.json
        {
            say!(err, "{}", summary_line(info));
        }
    }
}

/// "Sent 3 files, 1.50 GiB in 24s (63.5 MiB/s), verified by the receiver": the rate over
/// the bytes this `p2p` saw move, from the first to completion.
fn summary_line(info: &JobInfo) -> String {
    if info.files.is_empty() && info.bytes_total == 0 {
        return match info.direction {
            Direction::Send => "Sent; the receiver has it".to_owned(),
            Direction::Receive => "Received".to_owned(),
        };
    }
    let files = plural(info.files.len(), "file");
    // The daemon's measure: from the last report before data moved to the last one.
    let timing = if info.active_ms > 0 {
        let took = std::time::Duration::from_millis(info.active_ms);
        let rate = (info.active_bytes as f64 / took.as_secs_f64()) as u64;
        format!(" in {} ({}/s)", human_time(took), HumanBytes(rate))
    } else {
        String::new()
    };
    match info.direction {
        Direction::Send => format!(
            "Sent {files}, {}{timing}, verified by the receiver",
            HumanBytes(info.bytes_total)
        ),
        Direction::Receive => format!(
            "Received {files}, {}{timing}, every one verified",
            HumanBytes(info.bytes_total)
        ),
    }
}

/// "850 ms", "4.2 s", "3m 05s".
fn human_time(took: std::time::Duration) -> String {
    let ms = took.as_millis();
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", took.as_secs_f64()),
        _ => format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60),
    }
}
