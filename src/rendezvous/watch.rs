//! Who watches which rejoin channels: a daemon's one connection that stands for all of its
//! mailboxes (`watch`), knocked when a sender arrives on one of them so that it comes and
//! meets it on a connection of its own. Pure: time passed in. The memory store keeps one of
//! these; the Redis store keeps the same as keys with a TTL (`store/lua.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::bus::ConnRef;

/// Channels one `watch` may name: a daemon's paired devices, with room to spare.
pub const MAX_WATCHED: usize = 1024;

/// Whether `channels` is a list a `watch` may carry: 1 to [`MAX_WATCHED`] channels, each
/// 64 hex digits (a rejoin channel).
pub fn well_formed(channels: &[String]) -> bool {
    (1..=MAX_WATCHED).contains(&channels.len())
        && channels
            .iter()
            .all(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub struct WatchTable {
    max: usize,
    ttl: Duration,
    watchers: HashMap<String, (ConnRef, Instant)>,
}

impl WatchTable {
    /// At most `max` channels watched; each watch lasts `ttl` unless renewed.
    pub fn new(max: usize, ttl: Duration) -> WatchTable {
        WatchTable {
            max,
            ttl,
            watchers: HashMap::new(),
        }
    }

    /// `conn` watches `channels` (a newer watch of a channel replaces an older one);
    /// `false`, and nothing watched, when the table cannot take them.
    pub fn watch(&mut self, channels: &[String], conn: ConnRef, now: Instant) -> bool {
        let new = channels
            .iter()
            .filter(|c| !self.watchers.contains_key(*c))
            .count();
        if self.watchers.len() + new > self.max {
            self.watchers.retain(|_, (_, until)| *until > now);
            if self.watchers.len() + new > self.max {
                return false;
            }
        }
        let until = now + self.ttl;
        for channel in channels {
            self.watchers.insert(channel.clone(), (conn, until));
        }
        true
    }

    /// `conn` stops watching `channels` (a newer watch of one stays).
    pub fn unwatch(&mut self, channels: &[String], conn: ConnRef) {
        for channel in channels {
            if self.watchers.get(channel).is_some_and(|(c, _)| *c == conn) {
                self.watchers.remove(channel);
            }
        }
    }

    /// Who watches `channel` now.
    pub fn watcher(&self, channel: &str, now: Instant) -> Option<ConnRef> {
        self.watchers
            .get(channel)
            .filter(|(_, until)| *until > now)
            .map(|(conn, _)| *conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64) -> ConnRef {
        ConnRef { instance: 1, id }
    }

    fn channel(n: u8) -> String {
        hex::encode([n; 32])
    }

    #[test]
    fn the_newest_watch_of_a_channel_is_knocked_until_it_lapses_or_leaves() {
        let (mut t, now) = (WatchTable::new(4, Duration::from_secs(60)), Instant::now());
        assert!(t.watch(&[channel(1), channel(2)], conn(1), now));
        assert_eq!(t.watcher(&channel(1), now), Some(conn(1)));
        assert!(t.watch(&[channel(2)], conn(2), now));
        assert_eq!(t.watcher(&channel(2), now), Some(conn(2)));
        // The older watcher leaving takes only what is still its own.
        t.unwatch(&[channel(1), channel(2)], conn(1));
        assert_eq!(t.watcher(&channel(1), now), None);
        assert_eq!(t.watcher(&channel(2), now), Some(conn(2)));
        assert_eq!(t.watcher(&channel(2), now + Duration::from_secs(60)), None);
        assert_eq!(t.watcher(&channel(9), now), None);
    }

    #[test]
    fn a_full_table_takes_no_part_of_a_watch_until_watches_lapse() {
        let (mut t, now) = (WatchTable::new(2, Duration::from_secs(60)), Instant::now());
        assert!(t.watch(&[channel(1), channel(2)], conn(1), now));
        assert!(!t.watch(&[channel(3)], conn(2), now));
        assert_eq!(t.watcher(&channel(3), now), None);
        // Renewing what is watched needs no room.
        assert!(t.watch(&[channel(1)], conn(3), now));
        assert!(t.watch(&[channel(3)], conn(2), now + Duration::from_secs(61)));
    }

    #[test]
    fn a_watch_names_one_to_1024_rejoin_channels() {
        assert!(well_formed(&[channel(1)]));
        assert!(!well_formed(&[]));
        assert!(!well_formed(&["ab".into()]));
        assert!(!well_formed(&[format!("{}zz", &channel(1)[2..])]));
        assert!(!well_formed(&vec![channel(1); MAX_WATCHED + 1]));
    }
}
