//! Issue #24: instances reach Redis over TLS (`rediss://`), its certificate checked against
//! a private CA given with `--store-ca`; without that CA the store is not trusted and the
//! instance answers 503, failing closed.

use std::time::Duration;

use p2pd::rendezvous::server::RendezvousConfig;
use p2pd::rendezvous::store::StoreKind;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::cluster::{daemon_on, health, instance_with, transfer};
use crate::flood::rendezvous_with;
use crate::redis_server::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_redis_over_tls_checked_against_a_private_ca() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "p2pd test store CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = leaf.signed_by(&key, &ca).unwrap();
        let (cert_file, key_file) = (dir.path().join("redis.pem"), dir.path().join("redis.key"));
        std::fs::write(&cert_file, issued.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let redis = Redis::start_tls(&cert_file, &key_file);

        let trusting = || RendezvousConfig {
            store_ca: Some(ca.pem().into_bytes()),
            ..Default::default()
        };
        let (one, _one) = instance_with(&redis, trusting()).await;
        let (two, _two) = instance_with(&redis, trusting()).await;
        let a = daemon_on(one, "a").await;
        let b = daemon_on(two, "b").await;
        transfer(&a, &b, "over-tls.bin", 5).await;

        // Without the CA the certificate is not trusted: the instance never serves.
        let (untrusting, _three) = rendezvous_with(RendezvousConfig {
            store: StoreKind::Redis(redis.url()),
            ..Default::default()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (status, body) = health(untrusting).await;
        assert_eq!(status, 503, "{body}");
    })
    .await
    .expect("test finished in time");
}
