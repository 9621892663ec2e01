//! One state directory (issue #29): older versions kept the identity key, pairings and
//! job records in `~/.local/share/p2pd/jobs` when run by hand and in
//! `~/.local/state/p2pd/jobs` under the shipped unit, so switching to the service gave the
//! device a new fingerprint and dropped its pairings. Both now use one default; on the
//! first start with it, the state an older version left is moved in.

use std::io;
use std::path::{Path, PathBuf};

use crate::devices::identity::IDENTITY_FILE;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "earlier state directories {} and {} each hold an identity: move the one this device should keep into {} (or pass --state-dir), then start p2pd again",
        .first.display(), .second.display(), .into.display()
    )]
    Ambiguous {
        first: PathBuf,
        second: PathBuf,
        into: PathBuf,
    },
    #[error("cannot move the earlier state directory {} into {}", .from.display(), .into.display())]
    Move {
        from: PathBuf,
        into: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`adopt`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Adopted {
    /// Nothing to move: `state_dir` is in use already, or no earlier one holds anything.
    Nothing,
    /// Everything in this earlier directory now lives in `state_dir`.
    From(PathBuf),
}

/// Moves an earlier version's state into `state_dir` when `state_dir` holds no identity
/// yet and exactly one of `earlier` holds state. An earlier directory may lie inside
/// `state_dir` (the old unit's `…/p2pd/jobs` under the new `…/p2pd`). Entries are renamed,
/// not copied, so nothing (a private key above all) is left behind twice.
pub fn adopt(state_dir: &Path, earlier: &[PathBuf]) -> Result<Adopted, MigrateError> {
    if state_dir.join(IDENTITY_FILE).exists() {
        return Ok(Adopted::Nothing);
    }
    let holding: Vec<&PathBuf> = earlier
        .iter()
        .filter(|dir| dir.as_path() != state_dir && holds_state(dir))
        .collect();
    let from = match holding.as_slice() {
        [] => return Ok(Adopted::Nothing),
        [one] => *one,
        [first, second, ..] => {
            let with_identity: Vec<&&PathBuf> = holding
                .iter()
                .filter(|d| d.join(IDENTITY_FILE).exists())
                .collect();
            match with_identity.as_slice() {
                [one] => **one,
                [] => *first,
                _ => {
                    return Err(MigrateError::Ambiguous {
                        first: first.to_path_buf(),
                        second: second.to_path_buf(),
                        into: state_dir.to_owned(),
                    });
                }
            }
        }
    };
    let failed = |source| MigrateError::Move {
        from: from.clone(),
        into: state_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(failed)?;
    // Names that would clash: the new directory is in use after all; leave both alone.
    for entry in std::fs::read_dir(from).map_err(failed)? {
        let name = entry.map_err(failed)?.file_name();
        if state_dir.join(&name).exists() {
            return Ok(Adopted::Nothing);
        }
    }
    for entry in std::fs::read_dir(from).map_err(failed)? {
        let name = entry.map_err(failed)?.file_name();
        std::fs::rename(from.join(&name), state_dir.join(&name)).map_err(failed)?;
    }
    // Empty now; one left behind (a file appeared meanwhile) is harmless.
    let _ = std::fs::remove_dir(from);
    Ok(Adopted::From(from.clone()))
}

fn holds_state(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &Path, identity: &str) {
        std::fs::create_dir_all(dir.join("0a1b")).unwrap();
        std::fs::write(dir.join(IDENTITY_FILE), identity).unwrap();
        std::fs::write(dir.join("devices.json"), "[]").unwrap();
        std::fs::write(dir.join("0a1b").join("job.json"), "{}").unwrap();
    }

    #[test]
    fn the_hand_run_state_moves_into_the_one_directory() {
        let home = tempfile::tempdir().unwrap();
        let old = home.path().join("share/p2pd/jobs");
        let new = home.path().join("state/p2pd");
        state(&old, "key");
        let unit_old = new.join("jobs");
        let adopted = adopt(&new, &[old.clone(), unit_old]).unwrap();
        assert_eq!(adopted, Adopted::From(old.clone()));
        assert_eq!(
            std::fs::read_to_string(new.join(IDENTITY_FILE)).unwrap(),
            "key"
        );
        assert!(new.join("0a1b/job.json").exists() && new.join("devices.json").exists());
        assert!(!old.exists(), "nothing left behind twice");
        assert_eq!(adopt(&new, &[old]).unwrap(), Adopted::Nothing, "once only");
    }

    #[test]
    fn the_old_units_state_moves_up_out_of_jobs() {
        let home = tempfile::tempdir().unwrap();
        let new = home.path().join("state/p2pd");
        let unit_old = new.join("jobs");
        state(&unit_old, "unit key");
        let adopted = adopt(
            &new,
            &[home.path().join("share/p2pd/jobs"), unit_old.clone()],
        );
        assert_eq!(adopted.unwrap(), Adopted::From(unit_old.clone()));
        assert_eq!(
            std::fs::read_to_string(new.join(IDENTITY_FILE)).unwrap(),
            "unit key"
        );
        assert!(!unit_old.exists());
    }

    #[test]
    fn two_identities_are_not_guessed_between_and_a_used_directory_is_left_alone() {
        let home = tempfile::tempdir().unwrap();
        let (a, b) = (home.path().join("a"), home.path().join("b"));
        let new = home.path().join("new");
        state(&a, "a");
        state(&b, "b");
        let refused = adopt(&new, &[a.clone(), b.clone()]).unwrap_err();
        assert!(
            refused.to_string().contains("each hold an identity"),
            "{refused}"
        );
        assert!(a.join(IDENTITY_FILE).exists() && b.join(IDENTITY_FILE).exists());
        state(&new, "new");
        assert_eq!(adopt(&new, &[a]).unwrap(), Adopted::Nothing);
        assert_eq!(
            std::fs::read_to_string(new.join(IDENTITY_FILE)).unwrap(),
            "new"
        );
    }
}
