//! Who holds the few places a nearby listener has — its connections, and the offers
//! waiting for its person — and who gives way when they are full. Pure bookkeeping: the
//! caller ends whatever gives way.
//!
//! Anyone on the LAN can take a place, unauthenticated. A full table that turned
//! newcomers away would let a few connections that never send a word, or offers whose
//! sender never connects, lock every real sender out for as long as they last. So the
//! oldest place not yet proven gives way to a newcomer; a proven one (a connection past
//! its checks, an offer whose channel is open) never does, and only when every place is
//! proven is a newcomer turned away — as the rendezvous's admission does.

use std::collections::BTreeMap;

pub enum Taken<H> {
    /// Holds place `id`; `evicted` is the handle of the unproven place that gave way.
    In { id: u64, evicted: Option<H> },
    /// Every place is proven: nobody gives way.
    Full,
}

pub struct Places<H> {
    max: usize,
    next: u64,
    /// Ids grow with arrival, so the map's order is oldest first; `true` once proven.
    held: BTreeMap<u64, (bool, H)>,
}

impl<H> Places<H> {
    pub fn new(max: usize) -> Places<H> {
        Places {
            max,
            next: 0,
            held: BTreeMap::new(),
        }
    }

    /// Takes a place (unproven) for `handle`, the oldest unproven one giving way if full.
    pub fn take(&mut self, handle: H) -> Taken<H> {
        let evicted = if self.held.len() >= self.max {
            // A linear scan, but only when full, and over at most `max` entries.
            let oldest = self
                .held
                .iter()
                .find(|(_, (proven, _))| !proven)
                .map(|(id, _)| *id);
            match oldest.and_then(|id| self.held.remove(&id)) {
                Some((_, handle)) => Some(handle),
                None => return Taken::Full,
            }
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.held.insert(id, (false, handle));
        Taken::In { id, evicted }
    }

    /// Marks `id` proven; false if it already gave way (or left), so its holder stops.
    pub fn prove(&mut self, id: u64) -> bool {
        match self.held.get_mut(&id) {
            Some(entry) => {
                entry.0 = true;
                true
            }
            None => false,
        }
    }

    pub fn leave(&mut self, id: u64) {
        self.held.remove(&id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(taken: Taken<&'static str>) -> (u64, Option<&'static str>) {
        match taken {
            Taken::In { id, evicted } => (id, evicted),
            Taken::Full => panic!("turned away"),
        }
    }

    #[test]
    fn the_oldest_unproven_place_gives_way_and_a_proven_one_never() {
        let mut places = Places::new(3);
        let (a, _) = taken(places.take("a"));
        let (b, _) = taken(places.take("b"));
        let (_, _) = taken(places.take("c"));
        assert!(places.prove(b));
        let (d, evicted) = taken(places.take("d"));
        assert_eq!(evicted, Some("a"), "the oldest unproven one");
        assert!(!places.prove(a), "a place that gave way stays gone");
        let (_, evicted) = taken(places.take("e"));
        assert_eq!(
            evicted,
            Some("c"),
            "then the next oldest, passing the proven b"
        );
        assert!(places.prove(d));
        places.leave(b);
        let (_, evicted) = taken(places.take("f"));
        assert_eq!(evicted, None, "room again after one left");
        assert_eq!(places.len(), 3);
        let (_, evicted) = taken(places.take("g"));
        assert_eq!(evicted, Some("e"));
    }

    #[test]
    fn when_every_place_is_proven_a_newcomer_is_turned_away() {
        let mut places = Places::new(2);
        for handle in ["a", "b"] {
            let (id, _) = taken(places.take(handle));
            assert!(places.prove(id));
        }
        assert!(matches!(places.take("c"), Taken::Full));
        assert_eq!(places.len(), 2);
    }
}
