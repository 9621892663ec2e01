//! The documents and `--help` against the code: the defaults `--help` names, `--version`,
//! completions and manual pages, the README's demo, and docs/JSON.md's events.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::cli::*;
use crate::support::random_file;

/// The defaults `p2pd --help` names are the ones the code has.
#[test]
fn daemon_help_states_the_defaults_in_the_code() {
    let help = Command::new(P2PD).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    const MIB: usize = 1024 * 1024;
    let phrases = [
        format!(
            "Seconds an unused code stays valid (default {})",
            p2pd::config::DEFAULT_CODE_TTL.as_secs()
        ),
        format!(
            "(default {} h)",
            p2pd::config::DEFAULT_RESUME_WINDOW.as_secs() / 3600
        ),
        format!(
            "(default {} MiB; 0 leaves",
            p2pd::rtc::runtime::UDP_SOCKET_BUFFER_BYTES / MIB
        ),
        format!(
            "starts with, in bytes (default {} MiB)",
            p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_BYTES as usize / MIB
        ),
        format!(
            "(default {} MiB; equal to",
            p2pd::rtc::peer::SCTP_RECEIVE_WINDOW_MAX_BYTES as usize / MIB
        ),
        format!(
            "rto ({} ms RTO floor)",
            p2pd::rtc::sctp::RTO_MIN.as_millis()
        ),
        "bbr (rack with BBR-style pacing; the default)".to_owned(),
        format!(
            "for an offline device to come online (default {} h)",
            p2pd::config::DEFAULT_DEVICE_WAIT.as_secs() / 3600
        ),
    ];
    for phrase in phrases {
        assert!(
            flat.contains(&phrase),
            "p2pd --help should say {phrase:?}:\n{help}"
        );
    }
    // And p2p's, where it names the daemon's waits.
    let said = |args: &[&str]| {
        let help = Command::new(P2P).args(args).output().unwrap();
        String::from_utf8_lossy(&help.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let send = said(&["send", "--help"]);
    let phrase = format!(
        "the job waits for it ({} h unless p2pd's device_wait_secs",
        p2pd::config::DEFAULT_DEVICE_WAIT.as_secs() / 3600
    );
    assert!(
        send.contains(&phrase),
        "p2p send --help should say {phrase:?}"
    );
    let unpair = said(&["unpair", "--help"]);
    let phrase = format!(
        "(if it can be reached within {} s)",
        p2pd::daemon::mailbox::UNPAIR_NOTICE_LIMIT.as_secs()
    );
    assert!(
        unpair.contains(&phrase),
        "p2p unpair --help should say {phrase:?}"
    );
    assert_eq!(
        p2pd::rtc::sctp::SctpRecovery::default(),
        p2pd::rtc::sctp::SctpRecovery::Bbr
    );
    // The standalone rendezvous offers only flags it uses.
    let help = Command::new(P2PD)
        .args(["rendezvous", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.contains("--socket") && !help.contains("--download-dir"),
        "{help}"
    );
}

/// `--version` names the protocol; completions and manual pages come from the same clap
/// definitions as `--help`, for every shell clap_complete knows.
#[test]
fn version_completions_and_manual_pages() {
    let protocol = format!("(protocol {})", p2pd::rtc::peer::CHANNEL_LABEL);
    for binary in [P2P, P2PD] {
        let version = Command::new(binary).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.status.success() && text.contains(&protocol),
            "{text}"
        );
    }
    for (shell, marker) in [
        ("bash", "complete -F _p2p"),
        ("zsh", "#compdef p2p"),
        ("fish", "complete -c p2p"),
        ("elvish", "edit:completion:arg-completer[p2p]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = Command::new(P2P)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("detach"), "{shell}: flags missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    for binary in [P2P, P2PD] {
        let out = Command::new(binary).arg("man").arg(&man).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (page, needle) in [
        ("p2p.1", ".TH p2p 1"),
        ("p2p-send.1", "\\-\\-detach"),
        ("p2p-send.1", "Examples:"),
        ("p2p-receive.1", "\\-\\-stdout | tar x"),
        ("p2p-receive.1", "\\-\\-yes"),
        ("p2pd.1", "\\-\\-sctp\\-window\\-max\\-bytes"),
        ("p2pd-rendezvous.1", "\\-\\-turn\\-secret\\-file"),
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(needle), "{page}: no {needle:?}");
    }
}

/// The README's demo, as printed (without the `cargo install` in front, with the built
/// binaries on PATH): it verifies, and a second run does too and leaves nothing behind.
#[test]
fn the_readme_demo_runs_twice_and_leaves_nothing() {
    let readme = include_str!("../../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo install --locked --path . && bash -c"))
        .expect("the demo line");
    let script = line
        .strip_prefix("cargo install --locked --path . && ")
        .unwrap();
    let bin = Path::new(P2P).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cwd = tempfile::tempdir().unwrap();
    for run in 1..=2 {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(cwd.path())
            .env("PATH", &path)
            .env_remove("P2PD_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("identical"),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
        assert!(left.is_empty(), "run {run} left {left:?}");
    }
}

/// The events of docs/JSON.md, by name, with the fields each may carry.
fn documented_events() -> std::collections::BTreeMap<String, Vec<String>> {
    let doc = include_str!("../../docs/JSON.md");
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let fields_cell = rest.split('|').nth(1)?;
            let fields = fields_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            Some((name.to_owned(), fields))
        })
        .collect()
}

#[test]
fn json_events_follow_the_documented_schema_and_order() {
    let documented = documented_events();
    assert!(documented.contains_key("folder_saved"), "{documented:?}");
    let daemon = DaemonProcess::start();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("inner")).unwrap();
    random_file(&tree, "a.bin", 70_000, 51);
    random_file(&tree.join("inner"), "b.bin", 30_000, 52);
    let single = random_file(src.path(), "c.bin", 40_000, 53);
    let (sender, stdout, created) = spawn_json_send(
        &daemon.socket,
        &["--json", tree.to_str().unwrap(), single.to_str().unwrap()],
    );
    let code = created["code"].as_str().unwrap().to_owned();
    let received = daemon.p2p(&["receive", &code, "--yes", "--json"]);
    assert!(received.status.success());
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut { stdout }, &mut rest).unwrap();
    let mut sender = sender;
    assert!(sender.wait().unwrap().success());
    let sent = std::iter::once(created)
        .chain(json_lines(&rest))
        .collect::<Vec<_>>();
    for (side, values) in [("sender", sent), ("receiver", json_lines(&received.stdout))] {
        let names = events(&values);
        assert_eq!(names.first().map(String::as_str), Some("created"), "{side}");
        assert_eq!(
            names.last().map(String::as_str),
            Some("completed"),
            "{side}: {names:?}"
        );
        let final_state = values
            .iter()
            .position(|v| v["event"] == "state" && v["state"] == "completed")
            .unwrap_or_else(|| panic!("{side}: no final state in {names:?}"));
        assert!(
            values[final_state..]
                .iter()
                .all(|v| v["event"] == "state" || v["event"] == "completed"),
            "{side}: events after the final state: {names:?}"
        );
        for value in &values {
            let name = value["event"].as_str().unwrap();
            let fields = documented
                .get(name)
                .unwrap_or_else(|| panic!("{side}: {name} is not in docs/JSON.md"));
            assert!(value["job"].is_u64(), "{side}: {value}");
            for key in value.as_object().unwrap().keys() {
                assert!(
                    key == "event" || key == "job" || fields.contains(key),
                    "{side}: {name} carries {key:?}, which docs/JSON.md does not list"
                );
            }
        }
        if side == "receiver" {
            for expected in ["folder_saved", "file_verified", "files", "route"] {
                assert!(
                    names.contains(&expected.to_owned()),
                    "{expected}: {names:?}"
                );
            }
        }
    }
}
