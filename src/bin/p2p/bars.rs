//! The progress bars of a job being followed on a terminal: one per file (up to eight),
//! or one for the total naming the current file; rate and time left from the daemon.

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2pd::ipc::messages::JobInfo;
use p2pd::terminal::escape_for_terminal;

pub struct Bars {
    pub multi: MultiProgress,
    files: Vec<ProgressBar>,
    total: Option<ProgressBar>,
}

/// Above this many files, one bar for the total names the current file instead of one
/// bar per file.
const MAX_FILE_BARS: usize = 8;

/// Columns a bar's name may take on a terminal this wide: the rest of the line holds the
/// bar, the byte counts and the rate (about 50 columns), so a long name never wraps the
/// bar onto more lines.
pub fn name_width(columns: usize) -> usize {
    columns.saturating_sub(50).clamp(12, 60)
}

/// `name` in at most `width` characters, cut in the middle (the start and the extension
/// say most about a file).
pub fn fit(name: &str, width: usize) -> String {
    let count = name.chars().count();
    if count <= width {
        return name.to_owned();
    }
    let keep = width.saturating_sub(1);
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let start: String = name.chars().take(head).collect();
    let end: String = name.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

/// The terminal's width in columns (80 when unknown).
fn columns() -> usize {
    let (_, columns) = console::Term::stderr().size();
    if columns == 0 {
        80
    } else {
        usize::from(columns)
    }
}

/// The first file not yet verified, as "name (n/N)".
fn current_file(info: &JobInfo) -> String {
    match info.files.iter().position(|f| !f.verified) {
        Some(index) => format!(
            "{} ({}/{})",
            fit(
                &escape_for_terminal(&info.files[index].name),
                name_width(columns())
            ),
            index + 1,
            info.files.len()
        ),
        None => format!("{} files", info.files.len()),
    }
}

/// Bytes of file `index` done, given that files go one after another.
fn file_done(info: &JobInfo, index: usize) -> u64 {
    let before: u64 = info.files[..index].iter().map(|f| f.size).sum();
    info.bytes_done
        .saturating_sub(before)
        .min(info.files[index].size)
}

/// "63.5 MiB/s, ETA 7s" from the daemon's rate (bytes the receiver acknowledged over the
/// last seconds, the same figure on both sides); nothing before data moves.
fn rate_and_eta(info: &JobInfo) -> String {
    if info.rate == 0 {
        return String::new();
    }
    let left = info.bytes_total.saturating_sub(info.bytes_done) / info.rate;
    format!(
        "{}/s, ETA {}",
        HumanBytes(info.rate),
        indicatif::HumanDuration(std::time::Duration::from_secs(left))
    )
}

impl Bars {
    pub fn new(info: &JobInfo) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        // Rate and ETA come from the daemon ({msg}), not indicatif's own estimate, which
        // would count a watch's first position as bytes moved at once.
        let style =
            ProgressStyle::with_template("{prefix:.bold} [{wide_bar}] {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let per_file = info.files.len() <= MAX_FILE_BARS;
        let width = name_width(columns());
        let files = if per_file {
            info.files
                .iter()
                .map(|f| {
                    let bar = multi.add(ProgressBar::new(f.size).with_style(style.clone()));
                    bar.set_prefix(fit(&escape_for_terminal(&f.name), width));
                    bar
                })
                .collect()
        } else {
            Vec::new()
        };
        let total = (info.files.len() > 1).then(|| {
            let style = if per_file {
                style
            } else {
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:20}] {bytes}/{total_bytes} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
            };
            let bar = multi.add(ProgressBar::new(info.bytes_total).with_style(style));
            bar.set_prefix("total");
            bar
        });
        Bars {
            multi,
            files,
            total,
        }
    }

    pub fn show(&self, info: &JobInfo) {
        let rate = rate_and_eta(info);
        let current = info.files.iter().position(|f| !f.verified);
        for (index, bar) in self.files.iter().enumerate() {
            if index < info.files.len() {
                bar.set_position(file_done(info, index));
                // With no total bar, the file in progress carries the job's rate.
                if self.total.is_none() {
                    bar.set_message(if Some(index) == current {
                        rate.clone()
                    } else {
                        String::new()
                    });
                }
            }
        }
        if let Some(total) = &self.total {
            total.set_position(info.bytes_done);
            if self.files.is_empty() {
                total.set_message(format!("{rate} {}", current_file(info)));
            } else {
                total.set_message(rate);
            }
        }
    }

    /// Removes the bars from the terminal: at the end, lines say what they showed, and at
    /// Ctrl-C the line the terminal echoed `^C` onto is not drawn again below it.
    pub fn clear(self) {
        for bar in self.files.iter().chain(self.total.iter()) {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_name_is_cut_in_the_middle_to_leave_the_bar_its_line() {
        let name = "a-very-long-name-of-a-holiday-video-from-the-summer-of-2026.mkv";
        for columns in [70, 200] {
            let width = name_width(columns);
            let shown = fit(name, width);
            assert!(shown.chars().count() <= width, "{columns}: {shown}");
            assert!(width + 50 <= columns.max(62), "{columns}: {width}");
        }
        let shown = fit(name, 20);
        assert_eq!(shown, "a-very-lon…-2026.mkv");
        assert_eq!(fit("short.txt", 20), "short.txt");
        assert_eq!(fit("ééééééééé", 5), "éé…éé", "characters, not bytes");
    }
}
