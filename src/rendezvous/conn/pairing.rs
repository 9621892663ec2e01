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
use crate::rendezvous::messages::{ReclaimToken, ServerErrorKind, ServerMessage};
use crate::rendezvous::pair::{EXCHANGE_RELAYS, misses_per_minute};
use crate::rendezvous::slots::{BurnReason, Claim, ReclaimHash, Rejoin};

/// How long a claim waits for an allocator whose connection is gone to come back on
/// another (it reconnects at once when its instance dies), polling every
/// [`RECLAIM_POLL`].
const RECLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
const RECLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What a claimer hears when the allocator did not come back in [`RECLAIM_WAIT`].
const ALLOCATOR_AWAY: &str = "the other side lost its connection to the rendezvous and has not come back: try again in a minute";

/// Gone waiters one rejoin passes over before it gives up (a channel holds one waiter,
/// so more than a couple in a row is not a dead instance's leftover).
const STALE_WAITERS: u32 = 3;

/// One claim's outcome, and the allocator it found gone.
struct ClaimStep {
    step: Step,
    allocator_gone: Option<crate::rendezvous::slots::Holder>,
}

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
        let give_up = tokio::time::Instant::now() + RECLAIM_WAIT;
        loop {
            let step = self.claim_once(nameplate, phase, now, misses).await;
            let Some(holder) = step.allocator_gone else {
                return step.step;
            };
            // The allocator's connection is gone (its instance died, its network
            // dropped), not the allocator: the code waits again for it to come back on
            // another connection, and this claim waits for that a while.
            self.store().put_back(nameplate, holder, self.me()).await;
            if tokio::time::Instant::now() >= give_up {
                return Step::End(Some(error(ServerErrorKind::Busy, ALLOCATOR_AWAY)));
            }
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return Step::End(None),
                _ = tokio::time::sleep(RECLAIM_POLL) => {}
            }
        }
    }

    /// One claim of `nameplate`; `allocator_gone` when it waited but its connection
    /// could not be told (the nameplate is then paired with this claim, to put back).
    async fn claim_once(
        &self,
        nameplate: u32,
        phase: &mut Phase,
        now: Instant,
        misses: u32,
    ) -> ClaimStep {
        let step = |step| ClaimStep {
            step,
            allocator_gone: None,
        };
        let claimed = match self.store().claim(nameplate, self.me()).await {
            Ok(claimed) => claimed,
            Err(unavailable) => return step(unavailable_step(&unavailable)),
        };
        let holder = match claimed {
            Claim::Waiting(holder) => holder,
            Claim::Crowded => {
                return step(Step::End(Some(error(
                    ServerErrorKind::Crowded,
                    "that code is already in use by two parties",
                ))));
            }
            Claim::Abandoned => {
                return step(Step::End(Some(error(
                    ServerErrorKind::Abandoned,
                    "someone claimed that code without completing the key exchange",
                ))));
            }
            Claim::Unknown => {
                lock(&self.shared.misses).missed(misses, now);
                lock(&self.shared.addresses).note_miss(self.ip, now);
                return step(Step::End(Some(error(
                    ServerErrorKind::UnknownNameplate,
                    "no transfer is waiting with that code",
                ))));
            }
        };
        let Some(ips) = self.pair_with(holder.conn, holder.ip) else {
            // The code stays for a later claim.
            self.store().put_back(nameplate, holder, self.me()).await;
            return step(Step::End(Some(error(
                ServerErrorKind::Busy,
                TOO_MANY_PAIRS,
            ))));
        };
        let turn_user = new_turn_user();
        let told = Event::Paired {
            turn_user: turn_user.clone(),
            counted: ips.len() == 2,
        };
        if !self.store().deliver(holder.conn, self.me(), told).await {
            self.unpair(&ips);
            return ClaimStep {
                step: Step::Quiet,
                allocator_gone: Some(holder),
            };
        }
        debug!(nameplate, "paired");
        *phase = Phase::Paired {
            nameplate: Some(nameplate),
            peer: holder.conn,
            side: self.side(turn_user),
            pake: Some(tokio::time::Instant::now() + self.config().pake_deadline),
        };
        step(Step::Reply(self.paired()))
    }

    /// Takes `nameplate` back for this connection, when `token` is the one its allocation
    /// gave: the allocator lost its connection and waits again from this one.
    pub(super) async fn reclaim(
        &self,
        nameplate: u32,
        token: &ReclaimToken,
        phase: &mut Phase,
    ) -> Step {
        let hash = ReclaimHash::of(&token.0);
        let left = match self.store().reclaim(nameplate, hash, self.me()).await {
            Ok(Some(left)) => left,
            Ok(None) => {
                return Step::End(Some(error(
                    ServerErrorKind::Expired,
                    "that code no longer waits: it expired, or was used",
                )));
            }
            Err(unavailable) => return unavailable_step(&unavailable),
        };
        self.stand(&[self.id], Standing::Waiting);
        debug!(nameplate, "reclaimed");
        *phase = Phase::Waiting {
            nameplate,
            reclaim: hash,
            deadline: tokio::time::Instant::now() + left,
        };
        Step::Reply(ServerMessage::Allocated {
            nameplate,
            expires_in_secs: left.as_secs(),
            reclaim: ReclaimToken::default(),
        })
    }

    pub(super) async fn rejoin(&self, channel: String, sender: bool, phase: &mut Phase) -> Step {
        let well_formed = channel.len() == 64 && channel.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Step::End(Some(error(ServerErrorKind::Protocol, "bad rejoin channel")));
        }
        // A waiter met whose connection is gone (its instance died) was taken off the
        // channel by the meeting: this side then looks again, and waits there itself,
        // instead of hearing the other side went away. Bounded: each turn removes one.
        let mut stale_met = 0;
        loop {
            let found = match self
                .store()
                .rejoin(&channel, sender, self.me(), self.ip)
                .await
            {
                Ok(found) => found,
                Err(unavailable) => return unavailable_step(&unavailable),
            };
            match self.meet_rejoined(found, &channel, sender, phase).await {
                Some(step) => return step,
                None if stale_met < STALE_WAITERS => stale_met += 1,
                None => return Step::End(Some(ServerMessage::PeerGone)),
            }
        }
    }

    /// What a rejoin found: wait, or pair with the waiter met; `None` when the waiter's
    /// connection is gone.
    async fn meet_rejoined(
        &self,
        found: Rejoin,
        channel: &str,
        sender: bool,
        phase: &mut Phase,
    ) -> Option<Step> {
        let other = match found {
            Rejoin::Full => {
                return Some(Step::End(Some(error(
                    ServerErrorKind::Busy,
                    "too many waiting jobs, try again later",
                ))));
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
                    channel: channel.to_owned(),
                    sender,
                    deadline: tokio::time::Instant::now() + self.config().slot_ttl,
                };
                // A sender waits: the daemon watching this channel (its mailbox) comes.
                if sender && let Some(watcher) = self.store().watcher(channel).await {
                    let knock = Event::Knock {
                        channel: channel.to_owned(),
                    };
                    self.store().deliver(watcher, self.me(), knock).await;
                }
                return Some(Step::Quiet);
            }
            Rejoin::Meet(other) => other,
        };
        let Some(ips) = self.pair_with(other.conn, other.ip) else {
            self.store().put_back_rejoin(channel, other).await;
            return Some(Step::End(Some(error(
                ServerErrorKind::Busy,
                TOO_MANY_PAIRS,
            ))));
        };
        let turn_user = new_turn_user();
        let told = Event::Paired {
            turn_user: turn_user.clone(),
            counted: ips.len() == 2,
        };
        if !self.store().deliver(other.conn, self.me(), told).await {
            self.unpair(&ips);
            debug!("met a rejoin waiter whose connection is gone");
            return None;
        }
        debug!("rejoined");
        *phase = Phase::Paired {
            nameplate: None,
            peer: other.conn,
            side: self.side(turn_user),
            pake: None,
        };
        Some(Step::Reply(self.paired()))
    }

    /// Stands for a daemon's mailboxes: `watching`, then a knock for each channel a
    /// sender already waits on (and later, for each that one arrives on).
    pub(super) async fn watch(&self, channels: Vec<String>, phase: &mut Phase) -> Step {
        if !crate::rendezvous::watch::well_formed(&channels) {
            return Step::End(Some(error(
                ServerErrorKind::Protocol,
                "a watch names 1 to 1024 rejoin channels",
            )));
        }
        let waiting = match self.store().watch(&channels, self.me()).await {
            Ok(Some(waiting)) => waiting,
            Ok(None) => {
                return Step::End(Some(error(
                    ServerErrorKind::Busy,
                    "too many waiting jobs, try again later",
                )));
            }
            Err(unavailable) => return unavailable_step(&unavailable),
        };
        self.stand(&[self.id], Standing::Waiting);
        *phase = Phase::Watching {
            channels,
            deadline: tokio::time::Instant::now() + self.config().slot_ttl,
        };
        // Knocks for senders already there reach this connection's inbox, after the
        // answer: the daemon hears `watching` first.
        for channel in waiting {
            let knock = Event::Knock { channel };
            self.store().deliver(self.me(), self.me(), knock).await;
        }
        Step::Reply(ServerMessage::Watching)
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

    /// Frees this connection's slot and tells a paired peer we left. A waiting nameplate
    /// stays while this instance is `stopping` (until it expires), for its allocator to
    /// reclaim on another instance, as when an instance dies.
    pub(super) async fn leave(&self, phase: Phase, inbox: &mut Inbox, stopping: bool) {
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
            Phase::Waiting { .. } if stopping => {}
            Phase::Waiting { nameplate, .. } => self.store().release(nameplate, self.me()).await,
            // Only our own entry: a newer connection of our side may have replaced it.
            Phase::Rejoining { channel, .. } => {
                self.store().leave_rejoin(&channel, self.me()).await;
            }
            Phase::Watching { channels, .. } => self.store().unwatch(&channels, self.me()).await,
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
