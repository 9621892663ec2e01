//! The LAN announcement (pure): service `_p2pd._udp`, instance named by a random id made
//! at each start, and a TXT record with that id and the display name — never the identity
//! key or anything that lasts across restarts. What others announce is checked before it
//! is kept, and kept in a bounded table.

use std::collections::HashMap;
use std::net::IpAddr;

use rand::RngCore;

use crate::devices::registry::valid_device_name;

/// The DNS-SD service type. "udp" names the transfer's transport (WebRTC); the SRV
/// record's port is the TCP port where the daemon takes nearby offers.
pub const SERVICE_TYPE: &str = "_p2pd._udp.local.";
/// The TXT record's `v`: the version of this announcement and of `lan::signal`.
pub const VERSION: &str = "1";
/// Hex digits in a per-start id.
pub const ID_CHARS: usize = 12;
/// Announcements kept at once; more are ignored until some go.
pub const MAX_NEARBY: usize = 256;

/// A daemon seen on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nearby {
    pub id: String,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
}

/// A fresh id for this start of the daemon.
pub fn boot_id() -> String {
    let mut bytes = [0u8; ID_CHARS / 2];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The TXT record this daemon announces.
pub fn txt(id: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("v".to_owned(), VERSION.to_owned()),
        ("id".to_owned(), id.to_owned()),
        ("name".to_owned(), name.to_owned()),
    ])
}

/// What an announcement says, if it is a well-formed one of this version: instance named
/// by its id, a usable name, at least one address that is not loopback.
pub fn parse(
    instance: &str,
    property: impl Fn(&str) -> Option<String>,
    addresses: impl IntoIterator<Item = IpAddr>,
    port: u16,
) -> Option<Nearby> {
    if property("v")?.as_str() != VERSION {
        return None;
    }
    let id = property("id")?;
    let well_formed = id.len() == ID_CHARS && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed || instance != id || port == 0 {
        return None;
    }
    let name = property("name")?;
    if !valid_device_name(&name) {
        return None;
    }
    let mut addresses: Vec<IpAddr> = addresses
        .into_iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect();
    // IPv4 first: the LAN path most likely to work; then a stable order.
    addresses.sort_by_key(|a| (a.is_ipv6(), *a));
    addresses.dedup();
    if addresses.is_empty() {
        return None;
    }
    Some(Nearby {
        id,
        name,
        addresses,
        port,
    })
}

/// Why `--nearby NAME` found no single device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FindError {
    #[error("no nearby device is called {0}: p2p nearby lists the devices on this network")]
    None(String),
    #[error("{count} nearby devices are called {name}: pick one by its id, as p2p nearby lists it")]
    Ambiguous { name: String, count: usize },
}

/// The daemons seen on the LAN, by DNS-SD full name.
#[derive(Debug, Default)]
pub struct NearbyTable {
    by_fullname: HashMap<String, Nearby>,
}

impl NearbyTable {
    /// Keeps (or updates) an announcement, unless the table is full of others.
    pub fn seen(&mut self, fullname: &str, nearby: Nearby) {
        if self.by_fullname.len() >= MAX_NEARBY && !self.by_fullname.contains_key(fullname) {
            return;
        }
        self.by_fullname.insert(fullname.to_owned(), nearby);
    }

    pub fn gone(&mut self, fullname: &str) {
        self.by_fullname.remove(fullname);
    }

    /// Everything seen, by name then id.
    pub fn list(&self) -> Vec<Nearby> {
        let mut list: Vec<Nearby> = self.by_fullname.values().cloned().collect();
        list.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        list
    }

    /// The one device with this id, or else the one with this name.
    pub fn find(&self, name_or_id: &str) -> Result<Nearby, FindError> {
        if let Some(found) = self.by_fullname.values().find(|n| n.id == name_or_id) {
            return Ok(found.clone());
        }
        let named: Vec<&Nearby> = self
            .by_fullname
            .values()
            .filter(|n| n.name == name_or_id)
            .collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(FindError::None(name_or_id.to_owned())),
            many => Err(FindError::Ambiguous {
                name: name_or_id.to_owned(),
                count: many.len(),
            }),
        }
    }
}

/// Whether `peer` is on the same subnet as one of this machine's interfaces (given as
/// address and prefix length): what "on the LAN" means for taking a nearby offer.
pub fn on_local_subnet(peer: IpAddr, interfaces: &[(IpAddr, u8)]) -> bool {
    interfaces
        .iter()
        .any(|(local, prefix)| match (peer, local) {
            (IpAddr::V4(p), IpAddr::V4(l)) => {
                let bits = u32::from(*prefix.min(&32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(p) & mask == u32::from(*l) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(l)) => {
                let bits = u32::from(*prefix.min(&128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(p) & mask == u128::from(*l) & mask
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: &str, id: &str, name: &str) -> impl Fn(&str) -> Option<String> {
        let map = HashMap::from([
            ("v".to_owned(), v.to_owned()),
            ("id".to_owned(), id.to_owned()),
            ("name".to_owned(), name.to_owned()),
        ]);
        move |key| map.get(key).cloned()
    }

    #[test]
    fn an_announcement_says_only_a_fresh_id_and_the_name() {
        let id = boot_id();
        assert_eq!(id.len(), ID_CHARS);
        assert_ne!(id, boot_id());
        let record = txt(&id, "laptop");
        let mut keys: Vec<&str> = record.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "name", "v"]);
    }

    #[test]
    fn only_well_formed_announcements_are_kept() {
        let lan: IpAddr = "192.168.1.7".parse().unwrap();
        let v6: IpAddr = "fe80::1".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let id = "0123456789ab";
        let good = parse(id, props("1", id, "laptop"), [v6, loopback, lan], 4000).unwrap();
        assert_eq!(good.addresses, [lan, v6], "IPv4 first, no loopback");
        assert_eq!((good.name.as_str(), good.port), ("laptop", 4000));
        for (instance, p, addrs, port) in [
            (id, props("2", id, "laptop"), vec![lan], 4000),
            (id, props("1", "xyz", "laptop"), vec![lan], 4000),
            ("other", props("1", id, "laptop"), vec![lan], 4000),
            (id, props("1", id, "bell\u{7}"), vec![lan], 4000),
            (id, props("1", id, "laptop"), vec![loopback], 4000),
            (id, props("1", id, "laptop"), vec![lan], 0),
        ] {
            assert!(parse(instance, p, addrs, port).is_none());
        }
    }

    fn nearby(id: &str, name: &str) -> Nearby {
        Nearby {
            id: id.into(),
            name: name.into(),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            port: 1,
        }
    }

    #[test]
    fn a_name_finds_one_device_an_id_settles_a_tie_and_the_table_is_bounded() {
        let mut table = NearbyTable::default();
        table.seen("a", nearby("aaaaaaaaaaaa", "laptop"));
        table.seen("b", nearby("bbbbbbbbbbbb", "phone"));
        assert_eq!(table.find("laptop").unwrap().id, "aaaaaaaaaaaa");
        table.seen("c", nearby("cccccccccccc", "laptop"));
        assert_eq!(
            table.find("laptop"),
            Err(FindError::Ambiguous {
                name: "laptop".into(),
                count: 2
            })
        );
        assert_eq!(table.find("cccccccccccc").unwrap().name, "laptop");
        assert_eq!(table.find("tv"), Err(FindError::None("tv".into())));
        table.gone("c");
        assert_eq!(table.list().len(), 2);
        for i in 0..MAX_NEARBY * 2 {
            table.seen(&format!("x{i}"), nearby(&format!("{i:012}"), "x"));
        }
        assert_eq!(table.list().len(), MAX_NEARBY);
    }

    #[test]
    fn the_lan_is_the_subnets_of_this_machines_interfaces() {
        let interfaces = [
            ("192.168.1.2".parse().unwrap(), 24),
            ("fe80::1".parse().unwrap(), 64),
        ];
        for (peer, on) in [
            ("192.168.1.200", true),
            ("192.168.2.3", false),
            ("203.0.113.1", false),
            ("fe80::99", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(
                on_local_subnet(peer.parse().unwrap(), &interfaces),
                on,
                "{peer}"
            );
        }
    }
}
