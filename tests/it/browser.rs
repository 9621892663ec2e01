//! The page the rendezvous serves, in a real browser: Debian's Chromium, headless, driven
//! by playwright-core (`tests/web/drive.mjs`), against a real daemon — and against a
//! second browser. Every file is compared byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::manual::Terminal;
use crate::netns_harness::skip;
use crate::support::{TestDaemon, random_file, sha256_file};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The driver, with playwright-core installed beside it (`npm ci`, once per run).
fn driver() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
        let node = Command::new("node").arg("--version").output();
        if !matches!(node, Ok(ref out) if out.status.success()) || !Path::new(CHROMIUM).exists() {
            skip("needs Node.js and Chromium (Debian: nodejs, npm, chromium)");
        }
        if !web.join("node_modules/playwright-core").is_dir() {
            let installed = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&web)
                .output()
                .expect("run npm ci");
            assert!(
                installed.status.success(),
                "npm ci in tests/web failed: {}",
                String::from_utf8_lossy(&installed.stderr)
            );
        }
        web.join("drive.mjs")
    })
}

fn page_url(daemon: &TestDaemon) -> String {
    let ws = daemon.daemon.as_ref().expect("running").rendezvous_url();
    format!(
        "{}/",
        ws.replacen("ws://", "http://", 1).trim_end_matches('/')
    )
}

fn browser(args: &[&str]) -> Terminal {
    let driver = driver().to_str().unwrap().to_owned();
    let mut all = vec![driver.as_str()];
    all.extend_from_slice(args);
    Terminal::spawn("node", &all)
}

/// The driver's last line: its JSON verdict.
fn verdict(terminal: Terminal) -> serde_json::Value {
    let (lines, stderr) = terminal.finish_with_lines();
    // What the page logged, for a failing test's output.
    eprint!("{stderr}");
    let last = lines.last().cloned().unwrap_or_default();
    serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("no verdict ({e}): {last:?}; stderr: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and Chromium (CI installs them and runs --include-ignored)"]
async fn a_browser_sends_to_the_daemon_and_receives_from_it() {
    let daemon = TestDaemon::start().await;
    let url = page_url(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let upload = random_file(dir.path(), "from browser.bin", 3 * 1024 * 1024 + 5, 11);

    // Browser → daemon.
    let (url_send, path) = (url.clone(), upload.to_str().unwrap().to_owned());
    let sender = tokio::task::spawn_blocking(move || {
        let terminal = browser(&["send", &url_send, &path]);
        let line = terminal.line();
        let code = line
            .strip_prefix("code ")
            .unwrap_or_else(|| panic!("no code: {line}"));
        (code.to_owned(), terminal)
    })
    .await
    .unwrap();
    let (code, terminal) = sender;
    let job = daemon.receive(&code).await.expect("receive starts");
    let info = daemon.wait(job).await;
    let result = tokio::task::spawn_blocking(move || verdict(terminal))
        .await
        .unwrap();
    assert_eq!(result["state"], "done", "{result}; {info:?}");
    assert_eq!(
        info.state,
        p2pd::ipc::messages::JobState::Completed,
        "{info:?}"
    );
    assert_eq!(
        sha256_file(&daemon.downloads.join("from browser.bin")),
        sha256_file(&upload)
    );

    // Daemon → browser.
    let download = random_file(dir.path(), "to-browser.bin", 2 * 1024 * 1024 + 9, 12);
    let (_, code) = daemon
        .send(std::slice::from_ref(&download))
        .await
        .expect("send starts");
    let into = tempfile::tempdir().unwrap();
    let into_path = into.path().to_str().unwrap().to_owned();
    let result = tokio::task::spawn_blocking(move || {
        verdict(browser(&["receive", &url, &code, &into_path]))
    })
    .await
    .unwrap();
    assert_eq!(result["state"], "done", "{result}");
    assert_eq!(result["saved"], serde_json::json!(["to-browser.bin"]));
    assert_eq!(result["saving"], "stream", "a streamed download: {result}");
    assert_eq!(
        sha256_file(&into.path().join("to-browser.bin")),
        sha256_file(&download)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and Chromium (CI installs them and runs --include-ignored)"]
async fn a_wrong_code_in_the_browser_fails_with_the_clis_words() {
    let daemon = TestDaemon::start().await;
    let url = page_url(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "secret.bin", 1024, 13);
    let (job, code) = daemon.send(&[file]).await.expect("send starts");
    let nameplate = code.split('-').next().unwrap().to_owned();
    // Words from the list, but not the ones in the code.
    let wrong = if code.ends_with("-acid-acid") {
        format!("{nameplate}-acorn-acorn")
    } else {
        format!("{nameplate}-acid-acid")
    };
    let into = tempfile::tempdir().unwrap();
    let into_path = into.path().to_str().unwrap().to_owned();
    let result = tokio::task::spawn_blocking(move || {
        verdict(browser(&["receive", &url, &wrong, &into_path]))
    })
    .await
    .unwrap();
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(
        result["error"],
        format!(
            "error: {}",
            p2pd::rendezvous::SignalError::WrongCode {
                role: p2pd::rendezvous::Role::Receiver
            }
        )
    );
    assert_eq!(std::fs::read_dir(into.path()).unwrap().count(), 0);
    let info = daemon.wait(job).await;
    assert_eq!(info.state, p2pd::ipc::messages::JobState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and Chromium (CI installs them and runs --include-ignored)"]
async fn one_browser_sends_two_files_to_another() {
    // The daemon only hosts the rendezvous and the page here.
    let daemon = TestDaemon::start().await;
    let url = page_url(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let first = random_file(dir.path(), "one.bin", 1024 * 1024 + 1, 14);
    let second = random_file(dir.path(), "two.bin", 70_000, 15);
    let into = tempfile::tempdir().unwrap();
    let into_path = into.path().to_str().unwrap().to_owned();
    let (send_url, a, b) = (
        url.clone(),
        first.to_str().unwrap().to_owned(),
        second.to_str().unwrap().to_owned(),
    );
    let (receiver, sender) = tokio::task::spawn_blocking(move || {
        let sender = browser(&["send", &send_url, &a, &b]);
        let line = sender.line();
        let code = line
            .strip_prefix("code ")
            .unwrap_or_else(|| panic!("no code: {line}"))
            .to_owned();
        let receiver = verdict(browser(&["receive", &url, &code, &into_path]));
        (receiver, verdict(sender))
    })
    .await
    .unwrap();
    assert_eq!(sender["state"], "done", "{sender}");
    assert_eq!(receiver["state"], "done", "{receiver}");
    for source in [&first, &second] {
        let name = source.file_name().unwrap();
        assert_eq!(sha256_file(&into.path().join(name)), sha256_file(source));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and Chromium (CI installs them and runs --include-ignored)"]
async fn a_folder_picked_in_the_browser_arrives_with_its_structure() {
    let daemon = TestDaemon::start().await;
    let url = page_url(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("album");
    std::fs::create_dir_all(root.join("2026/summer")).unwrap();
    let top = random_file(&root, "cover.bin", 4096, 16);
    let deep = random_file(&root.join("2026/summer"), "beach.bin", 300_000, 17);
    let folder = root.to_str().unwrap().to_owned();
    let terminal = tokio::task::spawn_blocking(move || browser(&["send-folder", &url, &folder]))
        .await
        .unwrap();
    let (line, terminal) = tokio::task::spawn_blocking(move || (terminal.line(), terminal))
        .await
        .unwrap();
    let code = line
        .strip_prefix("code ")
        .unwrap_or_else(|| panic!("no code: {line}"));
    let job = daemon.receive(code).await.expect("receive starts");
    let info = daemon.wait(job).await;
    let result = tokio::task::spawn_blocking(move || verdict(terminal))
        .await
        .unwrap();
    assert_eq!(result["state"], "done", "{result}; {info:?}");
    let saved = daemon.downloads.join("album");
    assert_eq!(sha256_file(&saved.join("cover.bin")), sha256_file(&top));
    assert_eq!(
        sha256_file(&saved.join("2026/summer/beach.bin")),
        sha256_file(&deep)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and Chromium (CI installs them and runs --include-ignored)"]
async fn a_folder_received_in_the_browser_is_written_through_the_file_system_access_api() {
    let daemon = TestDaemon::start().await;
    let url = page_url(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("album");
    std::fs::create_dir_all(root.join("2026/summer")).unwrap();
    let top = random_file(&root, "cover.bin", 4096, 18);
    let deep = random_file(&root.join("2026/summer"), "beach.bin", 300_000, 19);
    std::fs::create_dir(root.join("empty")).unwrap();
    let (_, code) = daemon
        .send(std::slice::from_ref(&root))
        .await
        .expect("send starts");
    let result =
        tokio::task::spawn_blocking(move || verdict(browser(&["receive-fs", &url, &code])))
            .await
            .unwrap();
    assert_eq!(result["state"], "done", "{result}");
    assert_eq!(result["saving"], "folder", "{result}");
    assert_eq!(
        result["files"],
        serde_json::json!({
            "album/cover.bin": sha256_file(&top),
            "album/2026/summer/beach.bin": sha256_file(&deep),
            "album/empty/": "folder",
        }),
        "every file, at its path, and nothing else (no partial left behind)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and Chromium (CI installs them and runs --include-ignored)"]
async fn a_mistyped_code_spends_nothing_and_an_offer_of_folders_only_completes() {
    let daemon = TestDaemon::start().await;
    let url = page_url(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("empty-album");
    std::fs::create_dir_all(root.join("inner")).unwrap();
    let (job, code) = daemon
        .send(std::slice::from_ref(&root))
        .await
        .expect("send starts");
    let nameplate = code.split('-').next().unwrap().to_owned();
    let (typo_url, typo) = (url.clone(), format!("{nameplate}-notaword-acid"));
    let typo_result =
        tokio::task::spawn_blocking(move || verdict(browser(&["receive-fs", &typo_url, &typo])))
            .await
            .unwrap();
    assert_eq!(typo_result["state"], "failed", "{typo_result}");
    assert_eq!(
        typo_result["error"],
        format!(
            "error: {}",
            p2pd::rendezvous::CodeError::UnknownWord {
                word: "notaword".into(),
                nearest: p2pd::rendezvous::code::nearest_word("notaword"),
            }
        )
    );
    // The code was not spent: the right one still works, and folders alone complete.
    let result =
        tokio::task::spawn_blocking(move || verdict(browser(&["receive-fs", &url, &code])))
            .await
            .unwrap();
    assert_eq!(result["state"], "done", "{result}");
    assert_eq!(
        result["files"],
        serde_json::json!({ "empty-album/inner/": "folder" })
    );
    let info = daemon.wait(job).await;
    assert_eq!(
        info.state,
        p2pd::ipc::messages::JobState::Completed,
        "{info:?}"
    );
}
