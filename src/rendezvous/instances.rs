//! The instances of one rendezvous a daemon may use (`--rendezvous` given several times,
//! or a list in the config): several processes sharing a store, any of which serves any
//! client. A connection goes to the first that answers, starting from a random one so
//! daemons spread over them, and a round that reaches none is tried again after a
//! full-jitter exponential backoff (so daemons that lost the same instance do not all
//! come back at once).

use std::path::Path;
use std::time::Duration;

use rand::Rng;

use super::SignalError;
use super::client::RendezvousClient;
use super::tls::{Endpoint, TlsError};

/// Rounds over every instance before a connection gives up.
const ROUNDS: u32 = 3;
/// The backoff after round `n` is random in `0..min(CAP, BASE × 2ⁿ)`.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Instances {
    endpoints: Vec<Endpoint>,
}

impl Instances {
    /// Every URL with the same trust roots (`ca`, else the system's).
    pub fn new(urls: &[String], ca: Option<&Path>) -> Result<Instances, TlsError> {
        let endpoints = urls
            .iter()
            .map(|url| Endpoint::new(url, ca))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Instances { endpoints })
    }

    pub fn one(endpoint: Endpoint) -> Instances {
        Instances {
            endpoints: vec![endpoint],
        }
    }

    /// The first instance's URL: how the rendezvous is named in messages.
    pub fn url(&self) -> &str {
        self.endpoints
            .first()
            .map(Endpoint::url)
            .unwrap_or_default()
    }

    /// Connects to an instance that answers. One instance is tried once, as before there
    /// were several; several are tried in turn for [`ROUNDS`] rounds. A certificate
    /// problem ends the search: another instance of the same name will not cure it.
    pub async fn connect(&self) -> Result<RendezvousClient, SignalError> {
        let count = self.endpoints.len();
        if count <= 1 {
            let only = self
                .endpoints
                .first()
                .cloned()
                .ok_or(SignalError::RendezvousClosed)?;
            return RendezvousClient::connect(only).await;
        }
        let start = rand::thread_rng().gen_range(0..count);
        let mut last = SignalError::RendezvousClosed;
        for round in 0..ROUNDS {
            for offset in 0..count {
                let endpoint = &self.endpoints[(start + offset) % count];
                match RendezvousClient::connect(endpoint).await {
                    Ok(client) => return Ok(client),
                    Err(
                        error @ (SignalError::Untrusted { .. } | SignalError::WrongName { .. }),
                    ) => {
                        return Err(error);
                    }
                    Err(error) => last = error,
                }
            }
            if round + 1 < ROUNDS {
                // Drawn before the wait: the thread's generator must not live across it.
                let unit: f64 = rand::thread_rng().r#gen();
                tokio::time::sleep(backoff(round, unit)).await;
            }
        }
        Err(last)
    }
}

impl Instances {
    /// Waits in `client`'s allocated nameplate until a peer claims it. When the connection
    /// is lost (its instance died or stopped), waits again from a new one, on whichever
    /// instance answers, in the same nameplate: the code already shown stays good. Gives
    /// up [`RECLAIM_FOR`] after a loss, or when the nameplate no longer waits.
    pub async fn wait_for_peer(&self, client: &mut RendezvousClient) -> Result<(), SignalError> {
        loop {
            let lost = match client.wait_for_peer().await {
                Ok(()) => return Ok(()),
                // Closed, or the instance lost its store: the nameplate is in the store.
                Err(error @ (SignalError::RendezvousClosed | SignalError::Busy)) => error,
                Err(other) => return Err(other),
            };
            let Some((nameplate, token)) = client.allocation() else {
                return Err(lost);
            };
            tracing::info!("lost the rendezvous while waiting for the other side: reconnecting");
            let give_up = tokio::time::Instant::now() + RECLAIM_FOR;
            let mut round = 0;
            // A claim arriving meanwhile holds the nameplate for a moment before it puts it
            // back for us (the allocator is away): "no longer waits" is believed only when
            // it lasts.
            let mut gone_since = None;
            *client = loop {
                let attempt = async {
                    let mut fresh = self.connect().await?;
                    fresh.reclaim(nameplate, token.clone()).await?;
                    Ok::<_, SignalError>(fresh)
                };
                match attempt.await {
                    Ok(fresh) => break fresh,
                    // Gone from the store: an instance that was full made this connection
                    // give way (`busy`, which it freed its code with), or the code's time
                    // ran out.
                    Err(SignalError::Expired)
                        if *gone_since.get_or_insert_with(tokio::time::Instant::now) + GONE_FOR
                            <= tokio::time::Instant::now() =>
                    {
                        return Err(match lost {
                            SignalError::Busy => SignalError::Busy,
                            _ => SignalError::Expired,
                        });
                    }
                    Err(
                        error @ (SignalError::Untrusted { .. } | SignalError::WrongName { .. }),
                    ) => {
                        return Err(error);
                    }
                    Err(error) if tokio::time::Instant::now() >= give_up => return Err(error),
                    Err(_) => {}
                }
                let unit: f64 = rand::thread_rng().r#gen();
                tokio::time::sleep(backoff(round, unit)).await;
                round += 1;
            };
            tracing::info!("waiting for the other side again, with the same code");
        }
    }
}

/// How long a reclaimed nameplate must stay "no longer waiting" to be believed gone.
const GONE_FOR: Duration = Duration::from_secs(2);

/// How long a sender whose rendezvous connection was lost keeps trying to wait again in
/// its nameplate (a claim meanwhile waits 20 s for it: `conn/pairing.rs`).
pub const RECLAIM_FOR: Duration = Duration::from_secs(60);

/// Full jitter: `unit` (uniform in 0..1) of the round's ceiling.
fn backoff(round: u32, unit: f64) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << round.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        assert_eq!(backoff(0, 1.0), BACKOFF_BASE);
        assert_eq!(backoff(1, 1.0), BACKOFF_BASE * 2);
        assert_eq!(backoff(10, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(3, 0.0), Duration::ZERO);
        assert!(backoff(2, 0.5) <= BACKOFF_BASE * 2);
    }
}
