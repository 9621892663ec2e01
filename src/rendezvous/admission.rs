//! Which connections the rendezvous holds, in arrival order, and which one gives way when
//! it is full. Pure bookkeeping: the server closes whatever an admission evicts.
//!
//! A full server would otherwise lock every newcomer out for as long as the squatters keep
//! their sockets open. Instead the oldest connection that has not asked for anything gives
//! way, then the oldest one waiting in a slot; a paired connection (a transfer under way)
//! never does, and only when every held connection is paired is the newcomer turned away.

use std::collections::BTreeMap;

/// How far a connection has got; what decides who is evicted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Connected, has neither allocated, claimed nor rejoined.
    Fresh,
    /// Waiting in a slot or on a rejoin channel for its peer.
    Waiting,
    /// Talking to its peer.
    Paired,
}

pub enum Admit<H> {
    /// Admitted as `id`; `evicted` is the handle of the connection that gave way, if any.
    In { id: u64, evicted: Option<H> },
    /// Every held connection is paired: nobody gives way.
    Full,
}

pub struct Admission<H> {
    max: usize,
    next: u64,
    /// Ids grow with arrival, so the map's order is oldest first.
    held: BTreeMap<u64, (Standing, H)>,
}

impl<H> Admission<H> {
    pub fn new(max: usize) -> Admission<H> {
        Admission {
            max,
            next: 0,
            held: BTreeMap::new(),
        }
    }

    /// Admits a new connection (as [`Standing::Fresh`]), evicting one if full.
    pub fn admit(&mut self, handle: H) -> Admit<H> {
        let evicted = if self.held.len() >= self.max {
            let victim = self
                .oldest(Standing::Fresh)
                .or_else(|| self.oldest(Standing::Waiting));
            match victim.and_then(|id| self.held.remove(&id)) {
                Some((_, handle)) => Some(handle),
                None => return Admit::Full,
            }
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.held.insert(id, (Standing::Fresh, handle));
        Admit::In { id, evicted }
    }

    /// Records how far `id` has got; an evicted or departed id is ignored.
    pub fn set(&mut self, id: u64, standing: Standing) {
        if let Some(entry) = self.held.get_mut(&id) {
            entry.0 = standing;
        }
    }

    pub fn leave(&mut self, id: u64) {
        self.held.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A linear scan, but only when full, and over at most `max` entries.
    fn oldest(&self, standing: Standing) -> Option<u64> {
        self.held
            .iter()
            .find(|(_, (s, _))| *s == standing)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admit: Admit<&'static str>) -> (u64, Option<&'static str>) {
        match admit {
            Admit::In { id, evicted } => (id, evicted),
            Admit::Full => panic!("refused"),
        }
    }

    #[test]
    fn the_oldest_fresh_then_the_oldest_waiting_give_way_and_paired_never() {
        let mut table = Admission::new(3);
        let (a, _) = admitted(table.admit("a"));
        let (b, _) = admitted(table.admit("b"));
        let (c, _) = admitted(table.admit("c"));
        table.set(a, Standing::Waiting);
        table.set(b, Standing::Paired);
        let (d, evicted) = admitted(table.admit("d"));
        assert_eq!(evicted, Some("c"), "the only fresh one goes first");
        table.set(d, Standing::Paired);
        let (e, evicted) = admitted(table.admit("e"));
        assert_eq!(evicted, Some("a"), "then the oldest waiting one");
        table.set(e, Standing::Paired);
        assert!(matches!(table.admit("f"), Admit::Full), "all paired");
        assert_eq!(table.len(), 3);
        table.leave(b);
        let (_, evicted) = admitted(table.admit("g"));
        assert_eq!(evicted, None, "room again after a departure");
        table.set(c, Standing::Paired);
        assert_eq!(table.len(), 3, "an evicted id stays gone");
    }
}
