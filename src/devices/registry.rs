//! The devices paired with this daemon, kept in the state directory (`devices.json`,
//! readable by this user only). Names come from the other device, so they are checked
//! before they are stored and escaped wherever they are shown.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::fingerprint;
use super::mailbox::PairSecret;
use crate::daemon::record::write_private;

pub const DEVICES_FILE: &str = "devices.json";
/// Longest device name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// A name's bytes at most: the receiver saves into `From NAME/`, and a file name has at
/// most 255 bytes (64 emoji are 256; issue #23).
pub const MAX_NAME_BYTES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub name: String,
    /// The device's Ed25519 public key, hex.
    pub public_key: String,
    pub paired_unix: u64,
    #[serde(default)]
    pub last_seen_unix: Option<u64>,
    /// Shared with that device since pairing; what its mailbox and sessions are keyed
    /// from. Absent in pairings made before code-less sends existed: those pair again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<PairSecret>,
    /// What happens to an offer from this device.
    #[serde(default)]
    pub rule: Rule,
    /// Offers with more files than this are refused, whatever the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u64>,
    /// Offers of more bytes than this are refused, whatever the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// What happens to an offer from a paired device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// It waits in `p2p inbox` for `p2p accept` or `p2p decline`.
    #[default]
    Ask,
    /// It is saved to `From NAME/` in the download directory without asking.
    Auto,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Ask => "ask",
            Rule::Auto => "auto",
        }
    }
}

impl Device {
    pub fn key(&self) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.public_key, &mut key).ok()?;
        Some(key)
    }

    pub fn fingerprint(&self) -> String {
        self.key().map(|k| fingerprint(&k)).unwrap_or_default()
    }
}

/// A name a device may give itself: 1 to 64 characters in at most 200 bytes, none that
/// `terminal` counts as dangerous (controls, bidi, invisible characters and blank
/// fillers), no `/`, not `.` or `..` (it names a folder: `From NAME/`).
pub fn valid_device_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&count)
        && name.len() <= MAX_NAME_BYTES
        && name.trim() == name
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(crate::terminal::is_dangerous_char)
}

#[derive(Debug, Default)]
pub struct Registry {
    path: PathBuf,
    devices: Vec<Device>,
}

impl Registry {
    /// The paired devices in `state_dir`; none yet if the file does not exist.
    pub fn load(state_dir: &Path) -> io::Result<Registry> {
        let path = state_dir.join(DEVICES_FILE);
        let devices = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged ({e}): restore it, or remove it and pair again",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Registry { path, devices })
    }

    pub fn list(&self) -> &[Device] {
        &self.devices
    }

    pub fn find(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub fn find_key(&self, key: &[u8; 32]) -> Option<&Device> {
        let hex_key = hex::encode(key);
        self.devices.iter().find(|d| d.public_key == hex_key)
    }

    /// Records a pairing, durably, and returns the name it is kept under: a device already
    /// known by its key is renamed in place; a name another key holds gets a number
    /// (`laptop (2)`). If it cannot be saved, nothing changes.
    pub fn add(
        &mut self,
        name: &str,
        key: &[u8; 32],
        secret: PairSecret,
        now_unix: u64,
    ) -> io::Result<String> {
        let hex_key = hex::encode(key);
        let mut next = self.devices.clone();
        next.retain(|d| d.public_key != hex_key);
        let mut stored = name.to_owned();
        let mut n = 2;
        while next.iter().any(|d| d.name == stored) {
            stored = format!("{name} ({n})");
            n += 1;
        }
        next.push(Device {
            name: stored.clone(),
            public_key: hex_key,
            paired_unix: now_unix,
            last_seen_unix: Some(now_unix),
            secret: Some(secret),
            rule: Rule::default(),
            max_files: None,
            max_bytes: None,
        });
        self.commit(next)?;
        Ok(stored)
    }

    /// Sets how offers from `name` are handled, durably; `None` if no device has that
    /// name.
    pub fn set_rule(
        &mut self,
        name: &str,
        rule: Rule,
        max_files: Option<u64>,
        max_bytes: Option<u64>,
    ) -> io::Result<Option<Device>> {
        let Some(at) = self.devices.iter().position(|d| d.name == name) else {
            return Ok(None);
        };
        let mut next = self.devices.clone();
        next[at].rule = rule;
        next[at].max_files = max_files;
        next[at].max_bytes = max_bytes;
        let changed = next[at].clone();
        self.commit(next)?;
        Ok(Some(changed))
    }

    /// Notes that the device with `key` was just heard from, durably.
    pub fn seen(&mut self, key: &[u8; 32], now_unix: u64) -> io::Result<()> {
        let hex_key = hex::encode(key);
        let Some(at) = self.devices.iter().position(|d| d.public_key == hex_key) else {
            return Ok(());
        };
        let mut next = self.devices.clone();
        next[at].last_seen_unix = Some(now_unix);
        self.commit(next)
    }

    /// Forgets a device, durably; `None` if none has that name. If it cannot be saved,
    /// nothing changes.
    pub fn remove(&mut self, name: &str) -> io::Result<Option<Device>> {
        let Some(at) = self.devices.iter().position(|d| d.name == name) else {
            return Ok(None);
        };
        let mut next = self.devices.clone();
        let removed = next.remove(at);
        self.commit(next)?;
        Ok(Some(removed))
    }

    /// Saves `next`, and only then makes it the list: memory never says what the disk
    /// does not.
    fn commit(&mut self, next: Vec<Device>) -> io::Result<()> {
        // It holds the pair secrets: wiped once written.
        let bytes =
            zeroize::Zeroizing::new(serde_json::to_vec_pretty(&next).map_err(io::Error::other)?);
        write_private(&self.path, &bytes)?;
        self.devices = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_they_are_kept() {
        for good in ["laptop", "Ana's phone", "büro-pc", "a"] {
            assert!(valid_device_name(good), "{good}");
        }
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let wide = "\u{1F600}".repeat(MAX_NAME_CHARS);
        assert!(
            valid_device_name(&"\u{4E2D}".repeat(MAX_NAME_CHARS)),
            "64 CJK: 192 bytes"
        );
        assert!(format!("From {}", "\u{4E2D}".repeat(MAX_NAME_CHARS)).len() <= 255);
        for bad in [
            "",
            " lead",
            "trail ",
            ".",
            "..",
            "a/b",
            "bell\u{7}",
            "rtl\u{202e}",
            &wide,
            "lap\u{3164}top",
            "\u{2800}",
            long.as_str(),
        ] {
            assert!(!valid_device_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn pairings_survive_a_reload_and_names_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        assert_eq!(
            registry.add("laptop", &[1; 32], secret(), 10).unwrap(),
            "laptop"
        );
        assert_eq!(
            registry.add("laptop", &[2; 32], secret(), 11).unwrap(),
            "laptop (2)"
        );
        // The same key again: renamed in place, not a second entry.
        assert_eq!(
            registry.add("work", &[1; 32], secret(), 12).unwrap(),
            "work"
        );
        let reloaded = Registry::load(dir.path()).unwrap();
        let names: Vec<_> = reloaded.list().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["laptop (2)", "work"]);
        assert_eq!(reloaded.find("work").unwrap().key(), Some([1; 32]));
        let mut reloaded = reloaded;
        assert!(reloaded.remove("work").unwrap().is_some());
        assert!(reloaded.remove("work").unwrap().is_none());
        assert!(Registry::load(dir.path()).unwrap().find("work").is_none());
    }

    fn secret() -> PairSecret {
        PairSecret::from_bytes(&[7; 32])
    }

    #[test]
    fn rules_and_sightings_are_kept_and_old_pairings_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        registry.add("laptop", &[1; 32], secret(), 10).unwrap();
        assert_eq!(registry.find("laptop").unwrap().rule, Rule::Ask);
        let changed = registry
            .set_rule("laptop", Rule::Auto, Some(3), Some(1 << 20))
            .unwrap()
            .unwrap();
        assert_eq!(
            (changed.rule, changed.max_files, changed.max_bytes),
            (Rule::Auto, Some(3), Some(1 << 20))
        );
        assert!(
            registry
                .set_rule("nobody", Rule::Auto, None, None)
                .unwrap()
                .is_none()
        );
        registry.seen(&[1; 32], 99).unwrap();
        let reloaded = Registry::load(dir.path()).unwrap();
        let laptop = reloaded.find_key(&[1; 32]).unwrap();
        assert_eq!(laptop.last_seen_unix, Some(99));
        assert_eq!(laptop.rule, Rule::Auto);
        assert_eq!(laptop.secret, Some(secret()));
        // A pairing saved before secrets and rules existed.
        std::fs::write(
            dir.path().join(DEVICES_FILE),
            r#"[{"name":"old","public_key":"0101010101010101010101010101010101010101010101010101010101010101","paired_unix":1}]"#,
        )
        .unwrap();
        let old = Registry::load(dir.path()).unwrap();
        let old = old.find("old").unwrap();
        assert_eq!((old.secret.is_none(), old.rule), (true, Rule::Ask));
    }

    #[test]
    fn a_change_that_cannot_be_saved_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(dir.path()).unwrap();
        registry.add("laptop", &[1; 32], secret(), 10).unwrap();
        // The file's place taken by a folder: every save fails.
        std::fs::remove_file(dir.path().join(DEVICES_FILE)).unwrap();
        std::fs::create_dir(dir.path().join(DEVICES_FILE)).unwrap();
        assert!(registry.add("phone", &[2; 32], secret(), 11).is_err());
        assert!(registry.remove("laptop").is_err());
        let names: Vec<_> = registry.list().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["laptop"]);
    }
}
