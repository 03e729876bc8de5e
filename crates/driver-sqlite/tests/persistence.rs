//! What only a persistent, shareable driver must do: everything written survives closing and
//! reopening the file (fencing tokens keep increasing), and two drivers on the same file — two
//! "processes" inside this one — see each other's writes, share one gapless global order, one
//! lock table and one rate-limit state, and wake each other's subscriptions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kernel_core::{
    BatchPut, DeleteCondition, ErrorCode, EventFilter, EventStore, EventStoreExt, ExpectedVersion,
    ListOptions, Lock, NewEvent, PutOptions, Quota, RateLimiter, ReadStream, StorageDriver, json,
};

mod common;

use common::{config, ok, open};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;

    // Documents, a namespace with metadata, a TTL far away, a deleted key.
    let mut meta = kernel_core::Metadata::new();
    meta.insert("owner".into(), json!("team-a"));
    ok(
        d.create_namespace("books", meta.clone()).await,
        "create_namespace",
    );
    ok(
        d.put("books", "dune", json!({"year": 1965}), PutOptions::new())
            .await,
        "put",
    );
    ok(
        d.put("books", "dune", json!({"year": 1966}), PutOptions::new())
            .await,
        "put again",
    );
    ok(
        d.put(
            "books",
            "ttl",
            json!(1),
            PutOptions::new().ttl(Duration::from_secs(3600)),
        )
        .await,
        "put with ttl",
    );
    ok(
        d.put_many(
            "books",
            vec![
                BatchPut::new("a", json!("a")),
                BatchPut::new("b", json!("b")),
            ],
        )
        .await,
        "put_many",
    );
    ok(
        d.delete("books", "b", DeleteCondition::Always).await,
        "delete",
    );

    // Events and a snapshot.
    let r = ok(
        d.append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("Placed", json!({"n": 1})),
                NewEvent::new("Paid", json!({"n": 2})),
            ],
        )
        .await,
        "append",
    );
    assert_eq!(r.positions, vec![1, 2]);
    ok(
        d.append(
            "order-2",
            ExpectedVersion::Any,
            vec![NewEvent::new("Placed", json!({}))],
        )
        .await,
        "append 2",
    );
    ok(
        d.save_snapshot("order-1", 2, json!({"state": "paid"}))
            .await,
        "save_snapshot",
    );
    let retried = NewEvent::new("Shipped", json!({"n": 3}));
    ok(
        d.append("order-1", ExpectedVersion::Exact(2), vec![retried.clone()])
            .await,
        "append 3",
    );

    // A lease still held at shutdown, and released keys with fencing history.
    let mut last_fencing = 0;
    for _ in 0..3 {
        let l = ok(
            d.try_acquire("job", Duration::from_secs(60)).await,
            "acquire",
        )
        .expect("free");
        last_fencing = l.fencing_token;
        ok(d.release(&l).await, "release");
    }
    let held = ok(
        d.try_acquire("held", Duration::from_secs(60)).await,
        "acquire held",
    )
    .expect("free");

    // Rate-limit state: 3 of 5 used.
    let quota = Quota::per_minute(5);
    for _ in 0..3 {
        assert!(ok(d.check("api", &quota, 1).await, "check").allowed);
    }

    d.shutdown().await;
    let err = d.get("books", "dune").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    drop(d);

    let d = open(&cfg).await;
    let dune = ok(d.get("books", "dune").await, "get").expect("dune survives");
    assert_eq!((dune.value, dune.version), (json!({"year": 1966}), 2));
    assert!(ok(d.exists("books", "ttl").await, "exists"));
    let keys: Vec<String> = ok(d.list("books", &ListOptions::new()).await, "list")
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["a", "dune", "ttl"]);
    let ns = ok(d.list_namespaces().await, "list_namespaces");
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].metadata, meta);

    assert_eq!(ok(d.head_position().await, "head"), 4);
    let events = ok(
        d.read_stream("order-1", ReadStream::forward()).await,
        "read",
    );
    assert_eq!(
        events
            .iter()
            .map(|e| (e.version, e.position))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 4)]
    );
    // The retry after the restart is still idempotent.
    let again = ok(
        d.append("order-1", ExpectedVersion::Exact(2), vec![retried])
            .await,
        "re-append",
    );
    assert!(!again.written);
    assert_eq!(again.positions, vec![4]);
    let history = ok(d.load_aggregate("order-1").await, "load_aggregate");
    assert_eq!(history.snapshot.map(|s| s.version), Some(2));
    assert_eq!(history.events.len(), 1);
    // New appends continue the global order without a gap.
    let next = ok(
        d.append(
            "order-3",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Placed", json!({}))],
        )
        .await,
        "append after reopen",
    );
    assert_eq!(next.positions, vec![5]);

    // The lease is still held, by the same lease value; fencing tokens continue.
    assert!(
        ok(
            d.try_acquire("held", Duration::from_secs(60)).await,
            "try held"
        )
        .is_none(),
        "a live lease survives the restart"
    );
    ok(
        d.release(&held).await,
        "release the lease taken before the restart",
    );
    let l = ok(
        d.try_acquire("job", Duration::from_secs(60)).await,
        "acquire",
    )
    .expect("free");
    assert!(
        l.fencing_token > last_fencing,
        "fencing token {} after the restart must exceed {last_fencing}",
        l.fencing_token
    );

    // 3 of 5 used before the restart: 2 left.
    let peek = ok(d.check("api", &quota, 0).await, "peek");
    assert_eq!(peek.remaining, 2);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_driver_leaves_a_consistent_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let mut fencing = 0;
    for round in 0..3u64 {
        let d = open(&cfg).await;
        ok(
            d.put("ns", &format!("k{round}"), json!(round), PutOptions::new())
                .await,
            "put",
        );
        ok(
            d.append(
                "s-1",
                ExpectedVersion::Exact(round),
                vec![NewEvent::new("E", json!(round))],
            )
            .await,
            "append",
        );
        let l = ok(
            d.try_acquire("l", Duration::from_millis(50)).await,
            "acquire",
        )
        .expect("free: the previous round's lease lapsed");
        assert!(l.fencing_token > fencing);
        fencing = l.fencing_token;
        // Dropped without shutdown and without release.
        drop(d);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let d = open(&cfg).await;
    assert_eq!(ok(d.count("ns", None).await, "count"), 3);
    assert_eq!(ok(d.head_position().await, "head"), 3);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_drivers_on_one_file_share_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    // No safety-net re-read within the test: only a wake-up (the writer's or the
    // `data_version` watcher's) can deliver an event in time.
    cfg.subscription.poll_interval = Duration::from_secs(60);
    let a = Arc::new(open(&cfg).await);
    let b = Arc::new(open(&cfg).await);

    // Documents written by one are read by the other, conditions see the other's writes.
    ok(a.put("ns", "k", json!(1), PutOptions::new()).await, "put a");
    let seen = ok(b.get("ns", "k").await, "get b").expect("b sees a's write");
    assert_eq!(seen.version, 1);
    let err = b
        .put("ns", "k", json!(2), PutOptions::new().if_absent())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    ok(
        b.put("ns", "k", json!(2), PutOptions::new().if_version(1))
            .await,
        "cas b",
    );
    let err = a
        .put("ns", "k", json!(3), PutOptions::new().if_version(1))
        .await
        .unwrap_err();
    assert_eq!(err.current_version(), Some(2));

    // A transaction in one loses to a write through the other.
    let mut tx = ok(a.begin().await, "begin");
    ok(tx.get("ns", "k").await, "tx get");
    ok(
        b.put("ns", "k", json!("b"), PutOptions::new()).await,
        "put b",
    );
    ok(
        tx.put("ns", "k", json!("tx"), PutOptions::new()).await,
        "tx put",
    );
    let err = tx.commit().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Conflict);
    assert!(err.is_retryable());

    // One subscriber in b; appends from both, concurrently: one gapless order.
    let mut sub = ok(b.subscribe(0, EventFilter::all()).await, "subscribe");
    let mut tasks = Vec::new();
    for (name, d) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                d.append(
                    &format!("{name}-{i}"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("E", json!(i))],
                )
                .await
                .map(|r| r.positions)
                .unwrap_or_else(|e| panic!("append {name}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut positions = Vec::new();
    while positions.len() < 50 {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("an event within 5 s")
            .expect("the subscription goes on")
            .expect("no error");
        positions.push(e.position);
    }
    assert_eq!(positions, (1..=50).collect::<Vec<u64>>());

    // An append in a wakes b's idle subscription through b's `data_version` watcher.
    let started = Instant::now();
    ok(
        a.append(
            "late-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("E", json!(0))],
        )
        .await,
        "late append",
    );
    let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the late event arrives")
        .expect("open")
        .expect("ok");
    assert_eq!(e.position, 51);
    let delay = started.elapsed();
    assert!(
        delay < Duration::from_secs(2),
        "cross-driver delay {delay:?}"
    );

    // Locks are exclusive across the two; fencing tokens increase across them.
    let la = ok(
        a.try_acquire("lock", Duration::from_millis(200)).await,
        "a acquire",
    )
    .expect("free");
    assert!(ok(b.try_acquire("lock", Duration::from_secs(5)).await, "b try").is_none());
    let err = b.release(&la).await;
    assert!(
        err.is_ok(),
        "the lease value is the proof, whichever driver: {err:?}"
    );
    let lb = ok(
        b.try_acquire("lock", Duration::from_secs(5)).await,
        "b acquire",
    )
    .expect("free after release");
    assert!(lb.fencing_token > la.fencing_token);
    let err = a.release(&la).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::LockNotHeld);

    // One rate-limit state.
    let q = Quota::per_minute(4);
    let mut allowed = 0;
    for i in 0..8 {
        let d = if i % 2 == 0 { &a } else { &b };
        allowed += u32::from(ok(d.check("rl", &q, 1).await, "check").allowed);
    }
    assert_eq!(allowed, 4);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_does_not_fail_the_others_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(open(&config(&dir)).await);
    ok(
        d.put("ns", "taken", json!(0), PutOptions::new()).await,
        "put",
    );
    // Many concurrent writes land in the same groups; every other one fails its condition.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                d.put("ns", &format!("k{i}"), json!(i), PutOptions::new())
                    .await
                    .map(|_| true)
            } else {
                d.put("ns", "taken", json!(i), PutOptions::new().if_absent())
                    .await
                    .map(|_| true)
            }
        }));
    }
    let mut ok_count = 0;
    let mut exists = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok_count += 1,
            Err(e) if e.code() == ErrorCode::AlreadyExists => exists += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok_count, exists), (100, 100));
    assert_eq!(ok(d.count("ns", None).await, "count"), 101);
    // The writer goes on after failures.
    ok(
        d.put("ns", "after", json!(1), PutOptions::new()).await,
        "put after",
    );
    d.shutdown().await;
}
