//! `p2pd --check-config [FILE]` (issue #25): the settings resolved and printed, or what is
//! wrong with its line and key; the units run it before starting.

use std::path::Path;
use std::process::{Command, Output};

use crate::cli::P2PD;

/// `p2pd ARGS`, with no environment that could point it at the user's own config.
fn p2pd_checking(args: &[&str]) -> Output {
    Command::new(P2PD)
        .args(args)
        .env_remove("P2PD_CONFIG")
        .env_remove("P2PD_SOCKET")
        .env_remove("P2PD_STATE_DIR")
        .output()
        .unwrap()
}

#[test]
fn check_config_prints_the_settings_or_says_which_line_and_key_is_wrong() {
    // Issue #25: `p2pd --check-config [FILE]` (the units run it before starting).
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "max_files = 5\ndevice_name = \"desk\"\n").unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let checked = p2pd_checking(&[
        "--check-config",
        good.to_str().unwrap(),
        "--state-dir",
        state,
    ]);
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        out.contains("max_files = 5\n") && out.contains("device_name = \"desk\"\n"),
        "{out}"
    );
    assert!(
        !Path::new(state).exists(),
        "checking made the state directory"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max_files = 5\nmax_filez = 3\n").unwrap();
    let refused = p2pd_checking(&["--check-config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(err.contains("line 2") && err.contains("max_filez"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // The rendezvous's, with its flags: a zero capacity and a TLS key without its
    // certificate are refused, the defaults printed otherwise.
    let zero = p2pd_checking(&["rendezvous", "--check-config", "--max-connections", "0"]);
    assert_eq!(zero.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("max_connections must be at least 1"));
    let half = p2pd_checking(&["rendezvous", "--check-config", "--tls-key", "/nonexistent"]);
    assert_eq!(half.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&half.stderr).contains("--tls-cert"));
    let misplaced = p2pd_checking(&["rendezvous", "--check-config", "--store-ca", "/nonexistent"]);
    assert_eq!(misplaced.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&misplaced.stderr).contains("rediss://"));
    let fine = p2pd_checking(&[
        "rendezvous",
        "--check-config",
        "--store",
        "redis://u:secret@10.0.0.5:6379",
    ]);
    let out = String::from_utf8_lossy(&fine.stdout);
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    assert!(
        out.contains("max_connections = 10000\n")
            && out.contains("turn_credential_ttl_secs = 600\n"),
        "{out}"
    );
    assert!(!out.contains("secret"), "a password printed: {out}");
}
