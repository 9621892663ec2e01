//! Announcing this daemon and browsing for others with mDNS/DNS-SD (`mdns-sd`, which
//! runs its own thread): what is seen goes into a [`NearbyTable`].

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::announce::{self, Nearby, NearbyTable, SERVICE_TYPE};

#[derive(Debug, thiserror::Error)]
#[error("cannot announce on the LAN (mDNS): {0}")]
pub struct DiscoveryError(#[from] mdns_sd::Error);

pub struct Discovery {
    mdns: ServiceDaemon,
    /// This daemon's own instance, which browsing also sees.
    fullname: String,
    id: String,
    table: Arc<Mutex<NearbyTable>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Discovery {
    /// Announces `name` with a fresh id and `port` (where nearby offers are taken), and
    /// starts browsing.
    pub fn start(name: &str, port: u16) -> Result<Discovery, DiscoveryError> {
        let mdns = ServiceDaemon::new()?;
        // A loopback address is no use to anyone else on the LAN.
        mdns.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        let id = announce::boot_id();
        let host = format!("p2pd-{id}.local.");
        let info = ServiceInfo::new(SERVICE_TYPE, &id, &host, (), port, announce::txt(&id, name))?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        mdns.register(info)?;
        Ok(Discovery {
            mdns,
            fullname,
            id,
            table: Arc::default(),
        })
    }

    /// This start's id, as others see it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Daemons seen on the LAN now (not this one).
    pub fn nearby(&self) -> Vec<Nearby> {
        lock(&self.table).list()
    }

    pub fn find(&self, name_or_id: &str) -> Result<Nearby, announce::FindError> {
        lock(&self.table).find(name_or_id)
    }

    /// Follows announcements until `stop`, then withdraws this one.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let events = match self.mdns.browse(SERVICE_TYPE) {
            Ok(events) => events,
            Err(error) => {
                warn!(%error, "cannot browse the LAN for other daemons");
                stop.cancelled().await;
                self.withdraw();
                return;
            }
        };
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = events.recv_async() => match event {
                    Ok(event) => event,
                    Err(_) => break,
                },
            };
            match event {
                ServiceEvent::ServiceResolved(service) if service.fullname != self.fullname => {
                    let instance = service
                        .fullname
                        .strip_suffix(&format!(".{SERVICE_TYPE}"))
                        .unwrap_or_default()
                        .to_owned();
                    let property = |key: &str| service.get_property_val_str(key).map(str::to_owned);
                    let addresses: Vec<IpAddr> =
                        service.addresses.iter().map(|a| a.to_ip_addr()).collect();
                    match announce::parse(&instance, property, addresses, service.port) {
                        Some(nearby) => {
                            debug!(id = %nearby.id, "a daemon is nearby");
                            lock(&self.table).seen(&service.fullname, nearby);
                        }
                        None => debug!("ignored a malformed LAN announcement"),
                    }
                }
                ServiceEvent::ServiceRemoved(_, fullname) => lock(&self.table).gone(&fullname),
                _ => {}
            }
        }
        self.withdraw();
    }

    fn withdraw(&self) {
        let _ = self.mdns.unregister(&self.fullname);
        let _ = self.mdns.shutdown();
    }
}
