//! Building one tuned peer connection: the setting engine and configuration, and the event
//! handler that hands candidates, states and the peer's channel to
//! the negotiation without ever blocking the driver.

use std::sync::Arc;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use tokio::sync::{mpsc, watch};
use tracing::debug;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState, SettingEngineBuilder,
};

use super::{MAX_MESSAGE_BYTES, RtcSettings, SEND_BUFFER_LIMIT_BYTES, is_loopback};
use crate::rendezvous::Role;
use crate::rtc::RtcError;
use crate::rtc::runtime::TunedRuntime;

struct Handler {
    candidates: mpsc::Sender<RTCIceCandidateInit>,
    state: watch::Sender<RTCPeerConnectionState>,
    ice_state: watch::Sender<RTCIceConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
    channels: mpsc::Sender<Arc<dyn DataChannel>>,
    /// Whether a remote channel may still be taken (the answerer's one).
    accept_remote: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            // try_send: this runs on the driver, which must never wait on us.
            Ok(init) => {
                let _ = self.candidates.try_send(init);
            }
            Err(error) => debug!(%error, "unusable local candidate"),
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        debug!(%state, "ice connection state");
        self.ice_state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(%state, "peer connection state");
        self.state.send_replace(state);
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        // One channel per transfer, opened by the sender: the answering side takes the first
        // and closes every other, and the offering side closes all. A handle that is kept or
        // dropped without closing would leave the peer's stream open.
        let take = self
            .accept_remote
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if !take || self.channels.try_send(channel.clone()).is_err() {
            // Closing must not block the driver, so it runs on its own task.
            tokio::spawn(async move {
                let closed = channel.close().await;
                debug!(
                    ok = closed.is_ok(),
                    "closed a channel this side did not take"
                );
            });
        }
    }
}

/// The state watches of a peer connection under construction.
pub(super) struct Watches {
    state: watch::Sender<RTCPeerConnectionState>,
    ice_state: watch::Sender<RTCIceConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
}

/// The receiving ends of a peer connection's state watches.
pub(super) struct States {
    pub(super) state: watch::Receiver<RTCPeerConnectionState>,
    pub(super) ice_state: watch::Receiver<RTCIceConnectionState>,
    pub(super) gathering: watch::Receiver<RTCIceGatheringState>,
}

impl Watches {
    pub(super) fn new() -> (Watches, States) {
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (ice_state, ice_rx) = watch::channel(RTCIceConnectionState::New);
        let (gathering, gathering_rx) = watch::channel(RTCIceGatheringState::New);
        (
            Watches {
                state,
                ice_state,
                gathering,
            },
            States {
                state: state_rx,
                ice_state: ice_rx,
                gathering: gathering_rx,
            },
        )
    }
}

/// How long ICE holds a working relayed pair back for a direct one to work too. webrtc-rs
/// waits 2 s, which every relayed transfer paid in full (issue #29 item 11); a direct
/// pair that works at all does within a few round trips of its checks starting.
const RELAY_ACCEPTANCE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

pub(super) async fn build(
    settings: &RtcSettings,
    role: Role,
    candidates: mpsc::Sender<RTCIceCandidateInit>,
    watches: Watches,
) -> Result<
    (
        Arc<dyn PeerConnection>,
        mpsc::Receiver<Arc<dyn DataChannel>>,
    ),
    RtcError,
> {
    let loopback = settings.bind.iter().any(|a| is_loopback(a));
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_sctp_max_receive_buffer_size(settings.sctp_window_bytes)
        .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(MAX_MESSAGE_BYTES))
        .with_include_loopback_candidate(loopback)
        .with_relay_acceptance_min_wait(Some(RELAY_ACCEPTANCE_WAIT))
        .build();
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(
            settings
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
        )
        .with_ice_transport_policy(if settings.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        })
        .build();
    let (channels_tx, channels) = mpsc::channel(1);
    let handler = Handler {
        candidates,
        state: watches.state,
        ice_state: watches.ice_state,
        gathering: watches.gathering,
        channels: channels_tx,
        accept_remote: std::sync::atomic::AtomicBool::new(role == Role::Receiver),
    };
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(setting_engine)
        .with_runtime(Arc::new(TunedRuntime {
            buffer_bytes: settings.udp_buffer_bytes,
        }))
        .with_handler(Arc::new(handler))
        .with_udp_addrs(settings.bind.clone())
        .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT_BYTES)
        .build()
        .await
        .map_err(RtcError::Setup)?;
    Ok((Arc::new(pc), channels))
}
