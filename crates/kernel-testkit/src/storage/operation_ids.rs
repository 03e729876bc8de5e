//! Operation ids: [`StorageDriver::write_once`], [`StorageDriver::operation`] and
//! [`Transaction::commit_once`].

use kernel_core::{Applied, ErrorStatus, OperationId, Outcome, Write};

use super::*;

fn op(name: &str) -> OperationId {
    expect_ok(OperationId::new(unique(name)), "operation id")
}

async fn once<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    id: &OperationId,
    write: Write,
    what: &str,
) -> Applied {
    expect_ok(
        within(STEP_TIMEOUT, what, s.write_once(ns, id, write)).await,
        what,
    )
}

fn entry_of(applied: &Applied, what: &str) -> Entry {
    match &applied.outcome {
        Outcome::Put(e) => e.clone(),
        other => panic!("{what}: expected a put outcome, got {other:?}"),
    }
}

/// A put with an id is applied once; its repeat writes nothing and returns the first entry,
/// times included, even after the key moved on.
pub async fn write_once_put_applies_then_replays<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let id = op("create");
    let write = Write::put("k", json!({"n": 1}), PutOptions::new().if_absent());
    let first = once(s, &ns, &id, write.clone(), "first write_once").await;
    assert!(!first.replayed, "the first call applies the write");
    let entry = entry_of(&first, "first write_once");
    assert_eq!((entry.version, &entry.value), (1, &json!({"n": 1})));
    assert_eq!(must_get(s, &ns, "k").await, entry, "the write is stored");

    let again = once(s, &ns, &id, write.clone(), "repeated write_once").await;
    assert!(again.replayed, "the repeat is a replay");
    assert_eq!(
        again.outcome, first.outcome,
        "the replay returns the first outcome exactly"
    );

    put(s, &ns, "k", json!({"n": 2})).await;
    let late = once(s, &ns, &id, write, "write_once after the key moved").await;
    assert!(
        late.replayed,
        "still a replay after another write to the key"
    );
    assert_eq!(
        late.outcome, first.outcome,
        "the first outcome, not AlreadyExists"
    );
    let now = must_get(s, &ns, "k").await;
    assert_eq!(
        (now.version, now.value),
        (2, json!({"n": 2})),
        "replays write nothing"
    );
}

/// The case operation ids exist for: a compare-and-set whose answer was lost is repeated, and
/// the repeat reports the first success instead of `Conflict`.
pub async fn write_once_conditional_put_replays_after_key_moved<
    S: StorageDriver + ?Sized + 'static,
>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "counter", json!(1)).await;
    let id = op("cas");
    let write = Write::put("counter", json!(2), PutOptions::new().if_version(1));
    let first = once(s, &ns, &id, write.clone(), "CAS write_once").await;
    assert_eq!(entry_of(&first, "CAS").version, 2);
    put(s, &ns, "counter", json!(10)).await;
    // A plain repeat of the same compare-and-set now fails...
    let plain = s
        .put(&ns, "counter", json!(2), PutOptions::new().if_version(1))
        .await;
    expect_err(plain, ErrorCode::Conflict, "plain CAS repeat");
    // ...while the repeat with the id returns what the first call did.
    let again = once(s, &ns, &id, write, "CAS write_once repeat").await;
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(must_get(s, &ns, "counter").await.value, json!(10));
}

/// An id used again for a different request is a permanent `Conflict` naming the id, and
/// nothing is written.
pub async fn write_once_same_id_other_request_conflicts<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let id = op("reuse");
    once(
        s,
        &ns,
        &id,
        Write::put("k", json!(1), PutOptions::new()),
        "first",
    )
    .await;
    let others = [
        Write::put("k", json!(2), PutOptions::new()),
        Write::put("other", json!(1), PutOptions::new()),
        Write::put(
            "k",
            json!(1),
            PutOptions::new().ttl(Duration::from_secs(60)),
        ),
        Write::delete("k", DeleteCondition::Always),
        Write::PutMany(vec![BatchPut::new("k", json!(1))]),
    ];
    for other in others {
        let what = format!("reuse of the id for {other:?}");
        let e = expect_err(
            s.write_once(&ns, &id, other).await,
            ErrorCode::Conflict,
            &what,
        );
        assert_eq!(e.status(), ErrorStatus::Permanent, "{what}: {e}");
        assert_eq!(
            e.context_value("operation_id"),
            Some(id.as_str()),
            "{what}: the error names the id: {e}"
        );
    }
    let k = must_get(s, &ns, "k").await;
    assert_eq!((k.version, k.value), (1, json!(1)), "nothing written");
    assert!(get(s, &ns, "other").await.is_none(), "nothing written");
}

/// A write that fails records nothing: `operation` says `None`, and the same id applies the
/// same request once its condition holds.
pub async fn write_once_failed_write_records_nothing<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!("there")).await;
    let id = op("create");
    let write = Write::put("k", json!("mine"), PutOptions::new().if_absent());
    expect_err(
        s.write_once(&ns, &id, write.clone()).await,
        ErrorCode::AlreadyExists,
        "write_once of a create over a live key",
    );
    let recorded = expect_ok(s.operation(&ns, &id).await, "operation");
    assert_eq!(recorded, None, "a failed write records nothing");
    expect_ok(s.delete(&ns, "k", DeleteCondition::Always).await, "delete");
    let applied = once(s, &ns, &id, write, "write_once after the key went").await;
    assert!(!applied.replayed, "applied now, for the first time");
    assert_eq!(must_get(s, &ns, "k").await.value, json!("mine"));
}

/// Deletes and both batches replay their first outcome too.
pub async fn write_once_deletes_and_batches_replay<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "d", json!(1)).await;
    let del = Write::delete("d", DeleteCondition::IfVersion(1));
    let id = op("delete");
    let first = once(s, &ns, &id, del.clone(), "delete").await;
    assert_eq!(first.outcome, Outcome::Delete(true));
    let again = once(s, &ns, &id, del, "delete repeat").await;
    assert!(again.replayed);
    assert_eq!(
        again.outcome,
        Outcome::Delete(true),
        "true, as the first time"
    );

    let batch = Write::PutMany(vec![
        BatchPut::new("a", json!("A")),
        BatchPut::new("b", json!("B")).with_options(PutOptions::new().if_absent()),
    ]);
    let id = op("put_many");
    let first = once(s, &ns, &id, batch.clone(), "put_many").await;
    let Outcome::PutMany(entries) = &first.outcome else {
        panic!("put_many outcome: {:?}", first.outcome)
    };
    assert_eq!(
        entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let again = once(s, &ns, &id, batch, "put_many repeat").await;
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(
        must_get(s, &ns, "a").await.version,
        1,
        "the repeat wrote nothing"
    );

    let removal = Write::DeleteMany(vec![BatchDelete::new("a"), BatchDelete::new("b")]);
    let id = op("delete_many");
    let first = once(s, &ns, &id, removal.clone(), "delete_many").await;
    assert_eq!(first.outcome, Outcome::DeleteMany(2));
    put(s, &ns, "a", json!("again")).await;
    let again = once(s, &ns, &id, removal, "delete_many repeat").await;
    assert!(again.replayed);
    assert_eq!(again.outcome, Outcome::DeleteMany(2));
    assert!(exists(s, &ns, "a").await, "the replay removed nothing");
}

/// An id names an operation within one namespace: the same id elsewhere is another operation.
pub async fn write_once_ids_are_scoped_per_namespace<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let (ns1, ns2) = (unique("ns"), unique("ns"));
    let id = op("shared");
    let write = Write::put("k", json!(1), PutOptions::new());
    assert!(!once(s, &ns1, &id, write.clone(), "in ns1").await.replayed);
    assert!(!once(s, &ns2, &id, write, "in ns2").await.replayed);
    assert!(exists(s, &ns2, "k").await);
}

/// `operation` returns the recorded outcome, and `None` for an id never used.
pub async fn operation_reports_the_recorded_outcome<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let id = op("lookup");
    assert_eq!(expect_ok(s.operation(&ns, &id).await, "operation"), None);
    let applied = once(
        s,
        &ns,
        &id,
        Write::put("k", json!([1, 2.5, "x"]), PutOptions::new()),
        "write_once",
    )
    .await;
    let recorded = expect_ok(s.operation(&ns, &id).await, "operation");
    assert_eq!(recorded, Some(applied.outcome));
}

/// Bad input is refused before any I/O, with an id or without.
pub async fn write_once_validates_input<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let id = op("bad");
    let cases = [
        (
            "",
            Write::put("k", json!(1), PutOptions::new()),
            "empty namespace",
        ),
        (
            ns.as_str(),
            Write::put("", json!(1), PutOptions::new()),
            "empty key",
        ),
        (
            ns.as_str(),
            Write::put("k", json!(-0.0), PutOptions::new()),
            "negative zero",
        ),
        (
            ns.as_str(),
            Write::PutMany(vec![
                BatchPut::new("k", json!(1)),
                BatchPut::new("k", json!(2)),
            ]),
            "duplicate keys",
        ),
    ];
    for (namespace, write, what) in cases {
        expect_err(
            s.write_once(namespace, &id, write).await,
            ErrorCode::InvalidInput,
            what,
        );
    }
    expect_err(
        s.operation("", &id).await,
        ErrorCode::InvalidInput,
        "operation",
    );
    assert_eq!(expect_ok(s.operation(&ns, &id).await, "operation"), None);
    assert!(get(s, &ns, "k").await.is_none(), "nothing written");
}

/// A transaction committed with an id commits once; a second transaction with that id writes
/// nothing and reports a replay.
pub async fn tx_commit_once_commits_then_replays<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let id = op("tx");
    let Some(mut tx) = begin(s).await else { return };
    tx_put(&mut tx, &ns, "a", json!(1)).await;
    let first = expect_ok(
        within(STEP_TIMEOUT, "commit_once", tx.commit_once(&ns, &id)).await,
        "commit_once",
    );
    assert_eq!(first, Applied::fresh(Outcome::Commit));
    assert!(exists(s, &ns, "a").await, "committed");

    let Some(mut tx) = begin(s).await else { return };
    tx_put(&mut tx, &ns, "b", json!(2)).await;
    let again = expect_ok(
        within(STEP_TIMEOUT, "commit_once", tx.commit_once(&ns, &id)).await,
        "second commit_once",
    );
    assert!(again.replayed, "the second commit with the id is a replay");
    assert!(
        get(s, &ns, "b").await.is_none(),
        "a replayed transaction writes nothing"
    );
    assert_eq!(
        expect_ok(s.operation(&ns, &id).await, "operation"),
        Some(Outcome::Commit)
    );
}

/// 8 tasks send the same write with the same id at once: it is applied exactly once and every
/// task gets the same outcome.
pub async fn race_write_once_same_id_applies_once<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let ns = unique("ns");
    put(&*store, &ns, "k", json!(0)).await;
    let id = op("race");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, ns, id) = (store.clone(), ns.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let write = Write::put("k", json!(1), PutOptions::new().if_version(1));
            store.write_once(&ns, &id, write).await
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(expect_ok(join(task, "write_once task").await, "write_once"));
    }
    let fresh = outcomes.iter().filter(|a| !a.replayed).count();
    assert_eq!(fresh, 1, "exactly one call applies the write: {outcomes:?}");
    assert!(
        outcomes.iter().all(|a| a.outcome == outcomes[0].outcome),
        "every caller gets the same outcome: {outcomes:?}"
    );
    assert_eq!(must_get(&*store, &ns, "k").await.version, 2, "applied once");
}

/// Compare-and-set increments named by ids, each repeated once after it succeeded (a retry
/// after a lost answer): the counter ends exact.
pub async fn race_compare_and_set_with_operation_ids<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let ns = unique("ns");
    put(&*store, &ns, "counter", json!(0)).await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (store, ns) = (store.clone(), ns.clone());
        tasks.push(tokio::spawn(async move {
            let s = &*store;
            for i in 0..25 {
                let id = expect_ok(OperationId::new(format!("t{t}-i{i}")), "id");
                loop {
                    let e = must_get(s, &ns, "counter").await;
                    let n = e.value.as_u64().unwrap_or(u64::MAX);
                    let write = Write::put(
                        "counter",
                        json!(n + 1),
                        PutOptions::new().if_version(e.version),
                    );
                    match s.write_once(&ns, &id, write.clone()).await {
                        Ok(first) => {
                            let again = expect_ok(s.write_once(&ns, &id, write).await, "repeat");
                            assert!(again.replayed, "task {t}: the repeat is a replay");
                            assert_eq!(again.outcome, first.outcome, "task {t}");
                            break;
                        }
                        Err(err) if err.code() == ErrorCode::Conflict => {}
                        Err(err) => panic!("task {t}: write_once failed: {err}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        join(task, "CAS task").await;
    }
    let e = must_get(&*store, &ns, "counter").await;
    assert_eq!(
        (e.value, e.version),
        (json!(100), 101),
        "4 x 25 increments, each once"
    );
}
