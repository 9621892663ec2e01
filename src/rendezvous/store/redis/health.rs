//! The Redis store's health: whether Redis answers and the instance's subscription stands,
//! judged together into the `health` watch (`/healthz`, fail-closed), and the events that
//! subscription brings from other instances.

use super::*;

impl RedisStore {
    /// Checks Redis every [`CHECK_EVERY`], and at once when the subscription comes back:
    /// `None` while it answers, else why not, with when it was checked.
    pub(super) async fn check(
        self: Arc<Self>,
        reachable: watch::Sender<(Option<String>, Instant)>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.recheck.notified() => {}
            }
            let checked = Instant::now();
            let problem = match self.manager().await {
                Ok(mut manager) => {
                    let now = now_ms();
                    let counted = tokio::time::timeout(COMMAND_TIME, async {
                        let _: () = manager
                            .zrembyscore(format!("{PREFIX}open"), "-inf", now)
                            .await?;
                        manager.zcard::<_, usize>(format!("{PREFIX}open")).await
                    })
                    .await;
                    match counted {
                        Ok(Ok(open)) => {
                            self.open.store(open, Ordering::Relaxed);
                            None
                        }
                        Ok(Err(error)) => Some(describe(&error)),
                        Err(_) => Some("redis did not answer in time".to_owned()),
                    }
                }
                Err(problem) => Some(problem),
            };
            reachable.send_replace((problem, checked));
        }
    }

    /// Keeps this instance subscribed to its channel, handing what comes to its inboxes.
    pub(super) async fn subscribe(
        self: Arc<Self>,
        subscribed: watch::Sender<Option<Instant>>,
        stop: CancellationToken,
    ) {
        let channel = Self::channel(self.instance);
        loop {
            let connected = tokio::time::timeout(COMMAND_TIME, async {
                let Some(client) = &self.client else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "bad store address",
                    )));
                };
                let (mut sink, stream) = client.get_async_pubsub().await?.split();
                sink.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>((sink, stream))
            })
            .await;
            if let Ok(Ok((mut sink, mut stream))) = connected {
                subscribed.send_replace(Some(Instant::now()));
                self.recheck.notify_one();
                let mut ping = tokio::time::interval(CHECK_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        message = stream.next() => match message {
                            Some(message) => self.dispatch(message.get_payload_bytes()),
                            None => break,
                        },
                        // A dead connection is noticed by its pings, not only by its end.
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(COMMAND_TIME, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                subscribed.send_replace(None);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Serves only while the subscription stands and Redis answered since it was made
    /// (so the first request after an outage does not meet a stale connection).
    pub(super) async fn judge(
        self: Arc<Self>,
        mut reachable: watch::Receiver<(Option<String>, Instant)>,
        mut subscribed: watch::Receiver<Option<Instant>>,
        stop: CancellationToken,
    ) {
        loop {
            let (answered, checked) = reachable.borrow_and_update().clone();
            let since = *subscribed.borrow_and_update();
            let problem = match (answered, since) {
                (Some(problem), _) => Some(problem),
                (None, None) => Some("no subscription to redis".to_owned()),
                (None, Some(since)) if checked < since => Some("reconnecting to redis".to_owned()),
                (None, Some(_)) => None,
            };
            let changed = self.health.send_if_modified(|was| {
                let changed = *was != problem;
                *was = problem.clone();
                changed
            });
            if changed {
                match &problem {
                    Some(problem) => warn!(problem, "store unavailable: refusing new pairings"),
                    None => info!("store reachable: serving"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = reachable.changed() => {}
                _ = subscribed.changed() => {}
            }
        }
    }

    fn dispatch(&self, payload: &[u8]) {
        let Ok(Envelope { to, from, event }) = serde_json::from_slice::<Envelope>(payload) else {
            return;
        };
        let bounces = event.bounces();
        if !self.inboxes.deliver(to, Delivery { from, event }) && bounces {
            // Gone here: its peer hears so rather than waiting for nothing.
            let instance = self.instance;
            if let Ok(manager) = self.current_manager() {
                tokio::spawn(async move {
                    let gone = Envelope {
                        to: from.id,
                        from: ConnRef { instance, id: to },
                        event: Event::PeerGone,
                    };
                    let mut manager = manager;
                    let _ = publish(&mut manager, from.instance, &gone).await;
                });
            }
        }
    }
}
