//! What only the Redis driver has to prove, beyond the shared conformance suite: connection
//! errors, password redaction, script reloading, the key layout, lazy expiry clean-up, fencing
//! counters, cross-process subscriptions and shutdown.

use std::sync::Arc;
use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use fred::interfaces::{
    ClientLike, HashesInterface, KeysInterface, LuaInterface, SortedSetsInterface,
};
use futures::StreamExt;
use kernel_core::{
    ErrorCode, EventFilter, EventStore, ExpectedVersion, ListOptions, Lock, NewEvent, PutOptions,
    Query, StorageDriver, StorageExt, json,
};
use kernel_testkit::redis::RedisTestServer;
use kernel_testkit::{STEP_TIMEOUT, expect_err, expect_ok, unique, within};

fn config(server: &RedisTestServer) -> RedisConfig {
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = server.prefix().to_owned();
    config.pool_size = 2;
    config
}

async fn driver(server: &RedisTestServer) -> RedisDriver {
    expect_ok(RedisDriver::connect(config(server)).await, "connect")
}

#[tokio::test]
async fn malformed_url_is_a_config_error_naming_the_url() {
    let mut c = RedisConfig::new("not a url at all");
    c.connect_timeout = Duration::from_secs(1);
    let e = expect_err(RedisDriver::connect(c).await, ErrorCode::Config, "connect");
    assert_eq!(e.context_value("setting"), Some("redis.url"), "{e}");
    let mut c = RedisConfig::new("redis://127.0.0.1:6379");
    c.key_prefix = "bad{prefix}".into();
    let e = expect_err(RedisDriver::connect(c).await, ErrorCode::Config, "connect");
    assert_eq!(e.context_value("setting"), Some("redis.key_prefix"), "{e}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_naming_redis_without_the_password() {
    // Port 1 on localhost refuses connections at once.
    let mut c = RedisConfig::new("redis://user:sup3rsecret@127.0.0.1:1/0");
    c.connect_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let e = expect_err(
        RedisDriver::connect(c).await,
        ErrorCode::Unavailable,
        "connect",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.is_retryable());
    assert_eq!(e.context_value("backend"), Some("redis"));
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains("sup3rsecret"), "{shown}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
    }
}

#[tokio::test]
async fn a_wrong_password_never_shows_the_password() {
    let server = RedisTestServer::start().await;
    let url = server.url().replacen(
        "redis://",
        "redis://no-such-kernel-user:n0t-the-pa55word@",
        1,
    );
    let mut c = config(&server);
    c.url = url;
    c.connect_timeout = Duration::from_secs(2);
    // No such ACL user exists (a password-less default user would accept any password).
    let e = match RedisDriver::connect(c.clone()).await {
        Ok(d) => panic!("AUTH with a made-up password succeeded: {d:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    assert!(!e.is_retryable());
    for shown in [e.to_string(), format!("{e:?}"), format!("{c:?}")] {
        assert!(!shown.contains("n0t-the-pa55word"), "{shown}");
    }
}

#[tokio::test]
async fn debug_of_the_driver_redacts_the_url() {
    let server = RedisTestServer::start().await;
    // A server without `requirepass` accepts any password for the `default` user, so this
    // connects with a password in the URL.
    let mut c = config(&server);
    c.url = server
        .url()
        .replacen("redis://", "redis://default:sekret-pw@", 1);
    assert_ne!(
        c.url,
        server.url(),
        "the test URL must be redis://host:port"
    );
    let d = expect_ok(RedisDriver::connect(c).await, "connect with a password");
    let shown = format!("{d:?}");
    assert!(shown.contains(server.prefix()), "{shown}");
    assert!(
        !shown.contains("sekret-pw") && shown.contains("***@"),
        "{shown}"
    );
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let ns = unique("ns");
    expect_ok(d.put(&ns, "a", json!(1), PutOptions::new()).await, "put");
    let raw = server.raw_client().await;
    // Empties the server's script cache, as a restart or failover would.
    let _: () = raw.script_flush(false).await.unwrap();
    let e = expect_ok(
        d.put(&ns, "a", json!(2), PutOptions::new()).await,
        "put after flush",
    );
    assert_eq!(e.version, 2);
    assert_eq!(d.get(&ns, "a").await.unwrap().unwrap().value, json!(2));
    // A read of a document with a TTL goes through the get script (plain reads do not).
    let ttl = PutOptions::new().ttl(Duration::from_secs(60));
    expect_ok(d.put(&ns, "t", json!(3), ttl).await, "put with a TTL");
    let _: () = raw.script_flush(false).await.unwrap();
    let t = d.get(&ns, "t").await.unwrap().unwrap();
    assert_eq!((t.value, t.expires_at.is_some()), (json!(3), true));
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

/// The test's keys without the generation marker every driver creates on connect.
async fn keys_but_the_marker(server: &RedisTestServer) -> Vec<String> {
    let marker = format!("{}{{ev}}:generation", server.prefix());
    let keys = server.keys().await;
    assert!(
        keys.contains(&marker),
        "the driver keeps a marker: {keys:?}"
    );
    keys.into_iter().filter(|k| *k != marker).collect()
}

#[tokio::test]
async fn a_namespace_lives_under_the_prefix_in_one_slot() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let ns = unique("ns");
    d.put(
        &ns,
        "k",
        json!({"a": 1}),
        PutOptions::new().ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let keys = keys_but_the_marker(&server).await;
    let base = format!("{}{{d:{ns}}}", server.prefix());
    let expected: Vec<String> = ["data", "idx", "meta", "rev", "ttl"]
        .iter()
        .map(|s| format!("{base}:{s}"))
        .collect();
    assert_eq!(keys, expected);
    let slot = fred::util::redis_keyslot(keys[0].as_bytes());
    assert!(
        keys.iter()
            .all(|k| fred::util::redis_keyslot(k.as_bytes()) == slot)
    );
    d.shutdown().await.unwrap();
}

/// `put.lua` skips the index writes a stored key does not need; whatever was stored before, the
/// key must end in `idx`, and in `ttl` exactly when the new entry expires, or a later purge would
/// delete a live entry (or leave an expired one listed).
#[tokio::test]
async fn overwrites_keep_the_index_and_expiry_sets_exact() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let raw = server.raw_client().await;
    let ns = unique("ns");
    let idx = format!("{}{{d:{ns}}}:idx", server.prefix());
    let ttl = format!("{}{{d:{ns}}}:ttl", server.prefix());
    let sets = |key: &'static str| {
        let (raw, idx, ttl) = (raw.clone(), idx.clone(), ttl.clone());
        async move {
            let i: Option<f64> = raw.zscore(idx.as_str(), key).await.unwrap();
            let t: Option<f64> = raw.zscore(ttl.as_str(), key).await.unwrap();
            (i.is_some(), t.is_some())
        }
    };
    let short = || PutOptions::new().ttl(Duration::from_millis(50));
    // live TTL entry -> no TTL
    d.put(&ns, "a", json!(1), short()).await.unwrap();
    assert_eq!(sets("a").await, (true, true));
    d.put(&ns, "a", json!(2), PutOptions::new()).await.unwrap();
    assert_eq!(sets("a").await, (true, false));
    // expired (unpurged) entry -> no TTL
    d.put(&ns, "b", json!(1), short()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    d.put(&ns, "b", json!(2), PutOptions::new()).await.unwrap();
    assert_eq!(sets("b").await, (true, false));
    // no TTL -> TTL -> no TTL, and a fresh key with a TTL
    d.put(&ns, "c", json!(1), PutOptions::new()).await.unwrap();
    assert_eq!(sets("c").await, (true, false));
    d.put(
        &ns,
        "c",
        json!(2),
        PutOptions::new().ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(sets("c").await, (true, true));
    d.put(&ns, "c", json!(3), PutOptions::new()).await.unwrap();
    assert_eq!(sets("c").await, (true, false));
    // A put with a TTL purges: the entries that lost their TTL survive it.
    d.put(&ns, "d", json!(1), short()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    d.put(
        &ns,
        "e",
        json!(1),
        PutOptions::new().ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(sets("d").await, (false, false));
    for (key, value) in [("a", 2), ("b", 2), ("c", 3)] {
        let e = d.get(&ns, key).await.unwrap().expect(key);
        assert_eq!((e.value, e.expires_at), (json!(value), None), "{key}");
    }
    assert_eq!(
        d.list_keys(&ns, &ListOptions::new()).await.unwrap(),
        vec!["a", "b", "c", "e"]
    );
    assert_eq!(d.count(&ns, None).await.unwrap(), 4);
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_entries_are_invisible_before_clean_up_and_purged_by_a_later_write() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let ns = unique("ns");
    d.put(
        &ns,
        "short",
        json!(1),
        PutOptions::new().ttl(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    d.put(&ns, "long", json!(2), PutOptions::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let raw = server.raw_client().await;
    let data = format!("{}{{d:{ns}}}:data", server.prefix());
    let still: bool = raw.hexists(data.as_str(), "short").await.unwrap();
    assert!(
        still,
        "the expired entry is still stored (nothing has purged it yet)"
    );
    assert_eq!(d.get(&ns, "short").await.unwrap(), None);
    assert!(!d.exists(&ns, "short").await.unwrap());
    assert_eq!(d.count(&ns, None).await.unwrap(), 1);
    assert_eq!(
        d.list_keys(&ns, &ListOptions::new()).await.unwrap(),
        vec!["long"]
    );
    assert_eq!(d.query(&ns, &Query::new()).await.unwrap().len(), 1);
    // Later writes give the memory back: one put in 16 (per driver) purges, and so does any
    // put that sets a TTL. Sixteen plain puts must have purged it; until then it stays
    // invisible.
    let mut purged_after = None;
    for i in 0..16 {
        d.put(&ns, &format!("other{i}"), json!(3), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(d.get(&ns, "short").await.unwrap(), None);
        if !raw
            .hexists::<bool, _, _>(data.as_str(), "short")
            .await
            .unwrap()
        {
            purged_after = Some(i + 1);
            break;
        }
    }
    assert!(
        purged_after.is_some(),
        "sixteen writes did not purge the expired entry"
    );
    let idx = format!("{}{{d:{ns}}}:idx", server.prefix());
    let ttl = format!("{}{{d:{ns}}}:ttl", server.prefix());
    let indexed: Option<f64> = raw.zscore(idx.as_str(), "short").await.unwrap();
    let expiring: Option<f64> = raw.zscore(ttl.as_str(), "short").await.unwrap();
    assert_eq!((indexed, expiring), (None, None), "purged from both sets");
    // A put with a TTL purges at once.
    d.put(
        &ns,
        "short2",
        json!(1),
        PutOptions::new().ttl(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        raw.hexists::<bool, _, _>(data.as_str(), "short2")
            .await
            .unwrap()
    );
    d.put(
        &ns,
        "short3",
        json!(1),
        PutOptions::new().ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let still: bool = raw.hexists(data.as_str(), "short2").await.unwrap();
    assert!(!still, "a put with a TTL purged the expired entry");
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_stored_data_is_corrupted_naming_the_key() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let ns = unique("ns");
    d.put(&ns, "good", json!(1), PutOptions::new())
        .await
        .unwrap();
    let raw = server.raw_client().await;
    let data = format!("{}{{d:{ns}}}:data", server.prefix());
    let _: i64 = raw
        .hset(data.as_str(), ("bad", "not an entry"))
        .await
        .unwrap();
    let e = expect_err(d.get(&ns, "bad").await, ErrorCode::Corrupted, "get");
    assert!(e.to_string().contains("bad"), "{e}");
    // Listed too, in a namespace without TTLs (the scan script hands entries over unparsed)
    // and in one with a TTL (the script parses each header).
    let idx = format!("{}{{d:{ns}}}:idx", server.prefix());
    let _: i64 = raw
        .zadd(idx.as_str(), None, None, false, false, (0.0, "bad"))
        .await
        .unwrap();
    let e = expect_err(
        d.list(&ns, &ListOptions::new()).await,
        ErrorCode::Corrupted,
        "list without TTLs",
    );
    assert!(e.to_string().contains("bad"), "{e}");
    let ttl = PutOptions::new().ttl(Duration::from_secs(60));
    d.put(&ns, "expiring", json!(1), ttl).await.unwrap();
    let e = expect_err(
        d.list(&ns, &ListOptions::new()).await,
        ErrorCode::Corrupted,
        "list with a TTL",
    );
    assert!(e.to_string().contains("bad"), "{e}");
    // A key of the wrong Redis type under a kernel name.
    let _: () = raw.del(idx.as_str()).await.unwrap();
    let _: () = raw.set(idx.as_str(), "x", None, None, false).await.unwrap();
    let e = expect_err(
        d.list(&ns, &ListOptions::new()).await,
        ErrorCode::Corrupted,
        "list",
    );
    assert_eq!(e.context_value("namespace"), Some(ns.as_str()), "{e}");
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn fencing_counter_survives_release_and_expiry() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let key = unique("lock");
    let a = d
        .try_acquire(&key, Duration::from_millis(30))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let b = d
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(b.fencing_token > a.fencing_token);
    expect_err(d.release(&a).await, ErrorCode::LockNotHeld, "stale release");
    d.release(&b).await.unwrap();
    let fence = format!("{}{{l:{key}}}:fence", server.prefix());
    let holder = format!("{}{{l:{key}}}:holder", server.prefix());
    assert_eq!(keys_but_the_marker(&server).await, vec![fence]);
    let c = d
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.fencing_token, b.fencing_token + 1);
    // The holder key carries Redis' own expiry, so a crashed holder frees the lock.
    let raw = server.raw_client().await;
    let ttl: i64 = raw.pttl(holder.as_str()).await.unwrap();
    assert!(ttl > 0 && ttl <= 5000, "{ttl}");
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_append_through_one_driver_reaches_a_subscriber_of_another() {
    let server = RedisTestServer::start().await;
    let reader = driver(&server).await;
    let writer = driver(&server).await;
    let (_, stream) = kernel_testkit::unique_stream("order", "1");
    let head = reader.head_position().await.unwrap();
    let mut sub = reader.subscribe(head, EventFilter::all()).await.unwrap();
    for i in 0..3 {
        writer
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("Placed", json!({"i": i}))],
            )
            .await
            .unwrap();
        let got = within(STEP_TIMEOUT, "cross-driver event", sub.next())
            .await
            .expect("the subscription ended")
            .expect("the subscription failed");
        assert_eq!(got.payload, json!({"i": i}));
        assert_eq!(got.stream, stream);
    }
    reader.shutdown().await.unwrap();
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_refuses_later_calls() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let (_, stream) = kernel_testkit::unique_stream("order", "1");
    d.append(
        &stream,
        ExpectedVersion::Any,
        vec![NewEvent::new("A", json!(1))],
    )
    .await
    .unwrap();
    let head = d.head_position().await.unwrap();
    let mut sub = d.subscribe(head - 1, EventFilter::all()).await.unwrap();
    let clone = d.clone();
    d.shutdown().await.unwrap();
    // What was stored before the shutdown may still come; then the stream ends.
    let rest: Vec<_> = within(STEP_TIMEOUT, "subscription end", async {
        let mut rest = Vec::new();
        while let Some(item) = sub.next().await {
            rest.push(item);
        }
        rest
    })
    .await;
    assert!(rest.len() <= 1, "{rest:?}");
    let e = expect_err(
        clone.get("ns", "k").await,
        ErrorCode::Unavailable,
        "get after shutdown",
    );
    assert_eq!(e.context_value("backend"), Some("redis"));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_reports_latency_and_memory() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let s = d.status().await.unwrap();
    assert!(s.healthy);
    assert_eq!(s.backend, "redis");
    assert!(s.details.contains_key("used_memory"), "{:?}", s.details);
    assert!(s.details.contains_key("redis_version"), "{:?}", s.details);
    assert!(s.details.contains_key("dbsize"), "{:?}", s.details);
    assert!(!d.capabilities().native_query);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_transaction_spans_namespaces_atomically() {
    let server = RedisTestServer::start().await;
    let d = Arc::new(driver(&server).await);
    let (a, b) = (unique("a"), unique("b"));
    d.put(&a, "k", json!(1), PutOptions::new()).await.unwrap();
    let mut tx = d.begin().await.unwrap();
    let seen = tx.get(&a, "k").await.unwrap().unwrap();
    tx.put(&b, "k", json!(seen.value), PutOptions::new())
        .await
        .unwrap();
    tx.delete(&a, "k", Default::default()).await.unwrap();
    // Someone else writes what the transaction read: the commit must fail and write nothing.
    d.put(&a, "k", json!(5), PutOptions::new()).await.unwrap();
    let e = expect_err(tx.commit().await, ErrorCode::Conflict, "commit");
    assert!(e.is_retryable());
    assert_eq!(d.get(&b, "k").await.unwrap(), None);
    assert_eq!(d.get(&a, "k").await.unwrap().unwrap().value, json!(5));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_delete_and_recreate_between_read_and_commit_is_a_conflict() {
    // Versions repeat after a delete and re-create (1 again); write stamps do not.
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let ns = unique("ns");
    d.put(&ns, "k", json!(1), PutOptions::new()).await.unwrap();
    let mut tx = d.begin().await.unwrap();
    assert_eq!(tx.get(&ns, "k").await.unwrap().unwrap().version, 1);
    tx.put(&ns, "other", json!(0), PutOptions::new())
        .await
        .unwrap();
    d.delete(&ns, "k", Default::default()).await.unwrap();
    assert_eq!(
        d.put(&ns, "k", json!(2), PutOptions::new())
            .await
            .unwrap()
            .version,
        1
    );
    expect_err(tx.commit().await, ErrorCode::Conflict, "commit");
    assert_eq!(d.get(&ns, "other").await.unwrap(), None);
    d.shutdown().await.unwrap();
}

/// A write whose answer never comes back has an unknown outcome: `MaybeApplied`, not "safe to
/// retry", and indeed it was applied. A read that loses its answer stays retryable. The proxy
/// lets requests through and swallows the replies.
#[tokio::test]
async fn a_write_that_lost_its_answer_may_have_been_applied() {
    use kernel_core::ErrorStatus;
    use kernel_testkit::proxy::FaultProxy;

    let server = RedisTestServer::start().await;
    let (proxy, url) = expect_ok(
        FaultProxy::in_front_of(server.url(), 6379)
            .await
            .map_err(|e| kernel_core::Error::unavailable(format!("start the proxy: {e}"))),
        "proxy",
    );
    let mut c = config(&server);
    c.url = url;
    c.pool_size = 1;
    c.operation_timeout = Duration::from_millis(500);
    let proxied = expect_ok(RedisDriver::connect(c).await, "connect through the proxy");
    let direct = driver(&server).await;
    let ns = unique("lost");
    expect_ok(
        proxied.put(&ns, "k", json!(1), PutOptions::new()).await,
        "first put",
    );

    proxy.drop_replies(true);
    let err = expect_err(
        proxied
            .put(&ns, "k", json!(2), PutOptions::new().if_version(1))
            .await,
        ErrorCode::Timeout,
        "a put whose answer is lost",
    );
    assert_eq!(err.status(), ErrorStatus::MaybeApplied, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("outcome=unknown"), "{err}");
    let landed = expect_ok(direct.get(&ns, "k").await, "read back directly");
    assert_eq!(
        landed.map(|e| (e.value, e.version)),
        Some((json!(2), 2)),
        "the put whose answer was lost landed"
    );

    let err = expect_err(
        proxied.get(&ns, "k").await,
        ErrorCode::Timeout,
        "a get whose answer is lost",
    );
    assert_eq!(err.status(), ErrorStatus::Temporary, "{err}");
}

/// A Redis that lost the lock's counter (an empty restart, FLUSHALL) still hands out a larger
/// fencing token than before: a new counter starts from the clock, not from 1, so a resource
/// that checks tokens refuses the holder from before the loss.
#[tokio::test]
async fn fencing_tokens_keep_increasing_after_the_counters_are_lost() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let key = unique("fence");
    let ttl = Duration::from_secs(30);
    let before =
        expect_ok(d.try_acquire(&key, ttl).await, "acquire").expect("a free lock is taken");
    // The lock's keys gone, as after an empty restart (the generation marker is kept here:
    // `a_data_loss_is_noticed_by_lock_operations` covers the whole loss).
    let raw = server.raw_client().await;
    let lost: Vec<String> = server
        .keys()
        .await
        .into_iter()
        .filter(|k| k.ends_with(":fence") || k.ends_with(":holder"))
        .collect();
    assert!(
        lost.iter().any(|k| k.ends_with(":fence")),
        "the counter lives in Redis: {lost:?}"
    );
    let removed: i64 = raw.del(lost).await.expect("delete the test's keys");
    assert!(removed >= 2, "holder and counter removed");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let after = expect_ok(d.try_acquire(&key, ttl).await, "acquire after the loss")
        .expect("the lock is free after the loss");
    assert!(
        after.fencing_token > before.fencing_token,
        "tokens never go backwards: {} after {}",
        after.fencing_token,
        before.fencing_token
    );
}

/// Deletes every key of the test's prefix: what an empty restart or FLUSHALL leaves.
async fn lose_everything(server: &RedisTestServer) {
    let keys = server.keys().await;
    assert!(!keys.is_empty(), "there was data to lose");
    let removed: i64 = server
        .raw_client()
        .await
        .del(keys)
        .await
        .expect("delete the test's keys");
    assert!(removed > 0);
}

/// A Redis that lost the kernel's data (simulated: every key under the prefix deleted, as an
/// empty restart leaves it) is noticed, not served: the next append is refused atomically (no
/// position 1 handed out again), lock operations are refused, `status()` is unhealthy with the
/// reason, a live subscription ends with the error instead of waiting for positions that will
/// never come; after `acknowledge_data_loss` appends go on, positions starting over.
#[tokio::test]
async fn a_data_loss_is_noticed_and_refused_until_acknowledged() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let (_, stream) = kernel_testkit::unique_stream("order", "1");
    let event = |i: i64| NewEvent::new("Placed", json!({"i": i}));
    d.append(&stream, ExpectedVersion::Any, (0..3).map(event).collect())
        .await
        .unwrap();
    let mut sub = d.subscribe(0, EventFilter::all()).await.unwrap();
    for _ in 0..3 {
        within(STEP_TIMEOUT, "catch-up", sub.next())
            .await
            .expect("the subscription ended")
            .expect("the subscription failed");
    }
    let before = d.status().await.unwrap();
    assert!(before.healthy, "{before:?}");

    lose_everything(&server).await;
    // At once, without waiting for a periodic check: the append script checks the marker.
    let e = expect_err(
        d.append(&stream, ExpectedVersion::Any, vec![event(3)])
            .await,
        ErrorCode::Corrupted,
        "append after the data was lost",
    );
    assert!(!e.is_retryable(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("lost the kernel's data") && text.contains("acknowledge"),
        "{text}"
    );
    assert_eq!(e.context_value("stream"), Some(stream.as_str()), "{e}");
    assert!(
        server.keys().await.is_empty(),
        "nothing was written after the loss"
    );
    expect_err(
        d.try_acquire(&unique("lock"), Duration::from_secs(5)).await,
        ErrorCode::Corrupted,
        "lock after the data was lost",
    );
    let status = d.status().await.unwrap();
    assert!(!status.healthy, "{status:?}");
    assert!(
        status.details["error"].contains("generation marker"),
        "{status:?}"
    );
    let ended = within(STEP_TIMEOUT, "the subscription ends", sub.next())
        .await
        .expect("the subscription yields the error before it ends");
    assert_eq!(
        ended.expect_err("the subscription fails").code(),
        ErrorCode::Corrupted
    );

    let marker = d.acknowledge_data_loss().await.unwrap();
    assert!(d.data_loss().is_none());
    assert!(d.status().await.unwrap().healthy);
    let after = d
        .append(&stream, ExpectedVersion::Any, vec![event(3)])
        .await
        .unwrap();
    assert_eq!(
        after.positions,
        vec![1],
        "positions start over after the loss"
    );
    // Another driver connecting now adopts the same marker and works.
    let other = driver(&server).await;
    assert!(other.status().await.unwrap().healthy);
    assert_eq!(other.status().await.unwrap().details["generation"], marker);
}

/// A driver that only takes locks notices the loss too, within about a second.
#[tokio::test]
async fn a_data_loss_is_noticed_by_lock_operations() {
    let server = RedisTestServer::start().await;
    let d = driver(&server).await;
    let key = unique("lock");
    let lease = d
        .try_acquire(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    lose_everything(&server).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_err(
        d.release(&lease).await,
        ErrorCode::Corrupted,
        "release after the data was lost",
    );
    expect_err(
        d.try_acquire(&key, Duration::from_secs(30)).await,
        ErrorCode::Corrupted,
        "acquire after the data was lost",
    );
    d.acknowledge_data_loss().await.unwrap();
    let again = d
        .try_acquire(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free after the loss");
    assert!(again.fencing_token > lease.fencing_token);
}
