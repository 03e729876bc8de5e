//! `rediss-cluster://` against a private 6-node Redis Cluster whose nodes, cluster bus and
//! replication all use TLS, with certificates from a throwaway CA: documents on every master,
//! events, a lock and namespace listing work over verified TLS, and a client that does not
//! trust the CA is refused with the TLS error. (The whole suite runs on the clear-text cluster
//! in `tests/cluster.rs`; the key layout and scripts do not depend on the transport.)

use std::collections::BTreeSet;
use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use kernel_core::{
    ErrorCode, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions, ReadStream, StorageDriver,
    json,
};
use kernel_testkit::private::{PrivateRedisCluster, TestCa};

fn config(url: &str, ca: &std::path::Path) -> RedisConfig {
    RedisConfig {
        tls_ca_file: Some(ca.to_owned()),
        // Only the test CA: a system root must not make the test pass.
        tls_system_roots: false,
        connect_timeout: Duration::from_secs(5),
        pool_size: 1,
        key_prefix: "tls-cluster:".to_owned(),
        ..RedisConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_verifies_and_works_on_every_master() {
    let ca = TestCa::new();
    let cluster = {
        let ca_ref = &ca;
        std::thread::scope(|s| {
            s.spawn(|| PrivateRedisCluster::start_tls(ca_ref))
                .join()
                .expect("starting the TLS cluster panicked")
        })
    };
    assert!(
        cluster.url().starts_with("rediss-cluster://"),
        "{}",
        cluster.url()
    );
    let driver = RedisDriver::connect(config(cluster.url(), &ca.ca_cert()))
        .await
        .unwrap_or_else(|e| panic!("rediss-cluster with the test CA must connect: {e}"));

    // Namespaces until every master holds one.
    let mut masters = BTreeSet::new();
    let mut names = BTreeSet::new();
    for n in 0..64 {
        let ns = format!("ns-{n}");
        masters.insert(
            cluster.master_of_slot(cluster.slot_of(&format!("tls-cluster:{{d:{ns}}}:meta"))),
        );
        driver
            .put(&ns, "k", json!({"n": n}), PutOptions::new())
            .await
            .unwrap_or_else(|e| panic!("put in {ns} over TLS: {e}"));
        names.insert(ns);
        if masters.len() == 3 {
            break;
        }
    }
    assert_eq!(
        masters.len(),
        3,
        "the namespaces did not reach every master"
    );
    for ns in &names {
        assert!(driver.get(ns, "k").await.expect("get").is_some(), "{ns}");
    }
    let listed: BTreeSet<String> = driver
        .list_namespaces()
        .await
        .expect("list_namespaces over TLS")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, names);

    driver
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Placed", json!({}))],
        )
        .await
        .expect("append over TLS");
    let read = driver
        .read_stream("order-1", ReadStream::forward())
        .await
        .expect("read over TLS");
    assert_eq!(read.len(), 1);
    let lease = driver
        .try_acquire("res", Duration::from_secs(5))
        .await
        .expect("lock over TLS")
        .expect("a free lock");
    driver.release(&lease).await.expect("release over TLS");
    driver.shutdown().await.expect("shutdown");

    // A client that trusts another CA is refused, saying why.
    let err = RedisDriver::connect(config(cluster.url(), &ca.other_ca_cert()))
        .await
        .expect_err("an unknown CA must be refused");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert!(err.to_string().contains("not trusted"), "{err}");
}
