//! A connection's pairing: claiming a nameplate, meeting on a rejoin channel, the
//! claimer's key-exchange watch, and what leaving costs the pair.

use std::net::IpAddr;
use std::time::Instant;

use tracing::debug;

use super::{
    ABANDONED, Connection, Phase, Step, TOO_MANY_PAIRS, error, new_turn_user, unavailable_step,
};
use crate::rendezvous::admission::Standing;
use crate::rendezvous::bus::{ConnRef, Delivery, Event, Inbox, lock};
use crate::rendezvous::messages::{ServerErrorKind, ServerMessage};
use crate::rendezvous::pair::{EXCHANGE_RELAYS, misses_per_minute};
use crate::rendezvous::slots::{BurnReason, Claim, Rejoin};

impl Connection {
    /// The claimer's key-exchange deadline has passed: `None` if the exchange completed
    /// (the watch ends), else the answer to end this connection with. A claimer that did
    /// not send its SPAKE2 message and tag burns the nameplate for everyone; one whose
    /// allocator went silent just loses its peer.
    pub(super) async fn pake_verdict(&self, phase: &mut Phase) -> Option<ServerMessage> {
        let Phase::Paired {
            nameplate,
            peer,
            side,
            pake,
        } = phase
        else {
            return None;
        };
        pake.take()?;
        if side.exchanged() {
            return None;
        }
        if side.sent >= EXCHANGE_RELAYS {
            return Some(ServerMessage::PeerGone);
        }
        self.abandon(nameplate.take(), *peer).await;
        Some(error(ServerErrorKind::Abandoned, ABANDONED))
    }

    /// Burns `nameplate` into a tombstone and tells the allocator why. Only while the pair
    /// holds it: once the allocator has left, the code is gone anyway.
    pub(super) async fn abandon(&self, nameplate: Option<u32>, allocator: ConnRef) {
        if let Some(nameplate) = nameplate {
            self.store()
                .burn(nameplate, self.me(), BurnReason::Abandoned)
                .await;
            debug!(nameplate, "claim abandoned; nameplate burned");
        }
        let abandoned = Event::Error {
            kind: ServerErrorKind::Abandoned,
            message: ABANDONED.into(),
        };
        self.store().deliver(allocator, self.me(), abandoned).await;
    }

    /// Counts this connection paired unless the side that paired with it (on this
    /// instance) already did; `false` when its address has too many pairs.
    pub(super) fn count_paired(&self, counted: bool) -> bool {
        if !counted && !lock(&self.shared.addresses).pair(&[self.ip]) {
            return false;
        }
        self.stand(&[self.id], Standing::Paired);
        true
    }

    pub(super) async fn refuse(&self, to: ConnRef) {
        let refused = Event::Refused {
            message: TOO_MANY_PAIRS.into(),
        };
        self.store().deliver(to, self.me(), refused).await;
    }

    pub(super) async fn claim(&self, nameplate: u32, phase: &mut Phase) -> Step {
        let misses = misses_per_minute(self.config().misses_per_minute, self.store().open());
        // Spent: a sweep is on. The addresses sweeping wait, so it cannot go on finding
        // codes; another address still gets its look.
        let now = Instant::now();
        let missed_lately = lock(&self.shared.addresses).missed_lately(self.ip, now);
        if !lock(&self.shared.misses).open(misses, missed_lately, now) {
            return Step::End(Some(error(
                ServerErrorKind::Busy,
                "too many claims of codes that do not exist, try again in a minute",
            )));
        }
        let claimed = match self.store().claim(nameplate, self.me()).await {
            Ok(claimed) => claimed,
            Err(unavailable) => return unavailable_step(&unavailable),
        };
        let (allocator, allocator_ip) = match claimed {
            Claim::Waiting { conn, ip } => (conn, ip),
            Claim::Crowded => {
                return Step::End(Some(error(
                    ServerErrorKind::Crowded,
                    "that code is already in use by two parties",
                )));
            }
            Claim::Abandoned => {
                return Step::End(Some(error(
                    ServerErrorKind::Abandoned,
                    "someone claimed that code without completing the key exchange",
                )));
            }
            Claim::Unknown => {
                lock(&self.shared.misses).missed(misses, now);
                lock(&self.shared.addresses).note_miss(self.ip, now);
                return Step::End(Some(error(
                    ServerErrorKind::UnknownNameplate,
                    "no transfer is waiting with that code",
                )));
            }
        };
        let Some(ips) = self.pair_with(allocator, allocator_ip) else {
            // The code stays for a later claim.
            self.store()
                .put_back(nameplate, allocator, self.me(), allocator_ip)
                .await;
            return Step::End(Some(error(ServerErrorKind::Busy, TOO_MANY_PAIRS)));
        };
        let turn_user = new_turn_user();
        let told = Event::Paired {
            turn_user: turn_user.clone(),
            counted: ips.len() == 2,
        };
        if !self.store().deliver(allocator, self.me(), told).await {
            // The allocator left before it could hear.
            self.unpair(&ips);
            self.store().release(nameplate, self.me()).await;
            return Step::End(Some(ServerMessage::PeerGone));
        }
        debug!(nameplate, "paired");
        *phase = Phase::Paired {
            nameplate: Some(nameplate),
            peer: allocator,
            side: self.side(turn_user),
            pake: Some(tokio::time::Instant::now() + self.config().pake_deadline),
        };
        Step::Reply(self.paired())
    }

    pub(super) async fn rejoin(&self, channel: String, sender: bool, phase: &mut Phase) -> Step {
        let well_formed = channel.len() == 64 && channel.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Step::End(Some(error(ServerErrorKind::Protocol, "bad rejoin channel")));
        }
        let found = match self
            .store()
            .rejoin(&channel, sender, self.me(), self.ip)
            .await
        {
            Ok(found) => found,
            Err(unavailable) => return unavailable_step(&unavailable),
        };
        let other = match found {
            Rejoin::Full => {
                return Step::End(Some(error(
                    ServerErrorKind::Busy,
                    "too many waiting jobs, try again later",
                )));
            }
            Rejoin::Wait { replaced } => {
                if let Some(stale) = replaced {
                    let replaced = Event::Error {
                        kind: ServerErrorKind::Crowded,
                        message: "replaced by a newer connection".into(),
                    };
                    self.store().deliver(stale, self.me(), replaced).await;
                }
                self.stand(&[self.id], Standing::Waiting);
                *phase = Phase::Rejoining {
                    channel,
                    sender,
                    deadline: tokio::time::Instant::now() + self.config().slot_ttl,
                };
                return Step::Quiet;
            }
            Rejoin::Meet(other) => other,
        };
        let Some(ips) = self.pair_with(other.conn, other.ip) else {
            self.store().put_back_rejoin(&channel, other).await;
            return Step::End(Some(error(ServerErrorKind::Busy, TOO_MANY_PAIRS)));
        };
        let turn_user = new_turn_user();
        let told = Event::Paired {
            turn_user: turn_user.clone(),
            counted: ips.len() == 2,
        };
        if !self.store().deliver(other.conn, self.me(), told).await {
            self.unpair(&ips);
            return Step::End(Some(ServerMessage::PeerGone));
        }
        debug!("rejoined");
        *phase = Phase::Paired {
            nameplate: None,
            peer: other.conn,
            side: self.side(turn_user),
            pake: None,
        };
        Step::Reply(self.paired())
    }

    /// Counts this connection paired, and `other` too when it is on this instance (its
    /// own instance counts it otherwise, when it hears); `None` if an address would pass
    /// its cap. Marked paired before either side hears, so a newcomer arriving then
    /// cannot evict half of a pair.
    pub(super) fn pair_with(&self, other: ConnRef, other_ip: IpAddr) -> Option<Vec<IpAddr>> {
        let here = other.instance == self.me().instance;
        let ips = if here {
            vec![self.ip, other_ip]
        } else {
            vec![self.ip]
        };
        if !lock(&self.shared.addresses).pair(&ips) {
            return None;
        }
        if here {
            self.stand(&[self.id, other.id], Standing::Paired);
        } else {
            self.stand(&[self.id], Standing::Paired);
        }
        Some(ips)
    }

    pub(super) fn unpair(&self, ips: &[IpAddr]) {
        let mut addresses = lock(&self.shared.addresses);
        for ip in ips {
            addresses.unpair(*ip);
        }
    }

    /// Frees this connection's slot and tells a paired peer we left.
    pub(super) async fn leave(&self, phase: Phase, inbox: &mut Inbox) {
        self.store().unregister(self.id);
        // Paired as it left, before it heard: it counts (when its peer counted it), and
        // its peer hears it is gone.
        if matches!(phase, Phase::Waiting { .. } | Phase::Rejoining { .. }) {
            while let Ok(Delivery { from, event }) = inbox.try_recv() {
                if let Event::Paired { counted, .. } = event {
                    if counted {
                        self.unpair(&[self.ip]);
                    }
                    self.store().deliver(from, self.me(), Event::PeerGone).await;
                }
            }
        }
        match phase {
            Phase::Fresh => {}
            Phase::Waiting { nameplate, .. } => self.store().release(nameplate, self.me()).await,
            // Only our own entry: a newer connection of our side may have replaced it.
            Phase::Rejoining { channel, .. } => {
                self.store().leave_rejoin(&channel, self.me()).await;
            }
            // A claimer that leaves before its part of the key exchange abandons the code,
            // exactly as one that stays silent does.
            Phase::Paired {
                nameplate,
                peer,
                side,
                pake: Some(_),
            } if side.sent < EXCHANGE_RELAYS => {
                self.unpair(&[self.ip]);
                self.abandon(nameplate, peer).await;
            }
            Phase::Paired {
                nameplate, peer, ..
            } => {
                self.unpair(&[self.ip]);
                if let Some(nameplate) = nameplate {
                    // A burned nameplate's tombstone stays until it expires.
                    self.store().release(nameplate, self.me()).await;
                }
                self.store().deliver(peer, self.me(), Event::PeerGone).await;
            }
        }
    }
}
