//! Access control: a [`Principal`] holds read / write permissions on patterns of namespaces,
//! streams, lock keys and rate-limit keys ([`kernel_core::Glob`] patterns: `*`, `?`, `\`
//! escapes). Every operation is checked before any I/O; a denied one is
//! [`ErrorCode::PermissionDenied`] naming the
//! principal, the operation and what it touched.
//!
//! | operation | needs |
//! |---|---|
//! | `get`, `exists`, `get_many`, `list`, `query`, `count`, `get_metadata`, `tx.get` | read on the namespace |
//! | `put`, `delete`, `put_many`, `delete_many`, `clear`, `create_namespace`, `drop_namespace`, `set_metadata`, `tx.put`, `tx.delete` | write on the namespace |
//! | `list_namespaces` | nothing: it lists only namespaces the principal may read |
//! | `status`, `capabilities`, `begin` | nothing (each transaction step is checked) |
//! | `append`, `save_snapshot` | write on the stream |
//! | `read_stream`, `load_snapshot` | read on the stream |
//! | `read_all`, `subscribe`, `head_position` | read on at least one stream pattern; events of streams the principal may not read are left out |
//! | lock `try_acquire`, `acquire`, `release`, `extend` | write on the lock key |
//! | rate-limit `check` with cost > 0, `reset` | write on the key; a cost-0 check (a peek) needs read |
//!
//! Permissions are checked against the names the caller uses. Stacked over a
//! [`super::tenant::TenantScope`], that means patterns are written without the tenant prefix.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kernel_core::{
    AppendResult, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, ErrorCode,
    EventFilter, EventStore, EventSubscription, ExpectedVersion, Filter, Glob, Lease, ListOptions,
    ListPage, Lock, Metadata, MetadataMode, NamespaceInfo, NewEvent, PutOptions, Query, Quota,
    RateDecision, RateLimiter, ReadStream, RecordedEvent, Result, Snapshot, Status, StorageDriver,
    Transaction, Value, validate,
};

use super::{Access, Layer, read_all_kept};

/// What a permission covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Document namespaces.
    Namespace,
    /// Event streams.
    Stream,
    /// Lock keys.
    LockKey,
    /// Rate-limit keys.
    RateLimitKey,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Namespace => "namespace",
            Resource::Stream => "stream",
            Resource::LockKey => "lock key",
            Resource::RateLimitKey => "rate-limit key",
        }
    }

    fn context(self) -> &'static str {
        match self {
            Resource::Namespace => "namespace",
            Resource::Stream => "stream",
            Resource::LockKey | Resource::RateLimitKey => "key",
        }
    }
}

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Both.
    ReadWrite,
}

impl Permission {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Permission::ReadWrite, _)
                | (Permission::Read, Access::Read)
                | (Permission::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone)]
struct Grant {
    resource: Resource,
    pattern: Glob,
    permission: Permission,
}

/// Who is calling and what they may do. Nothing is allowed until granted.
///
/// ```
/// use kernel_bootstrap::layers::access::{Permission, Principal, Resource};
///
/// let reporting = Principal::new("reporting")
///     .allow(Resource::Namespace, "*", Permission::Read)?
///     .allow(Resource::Stream, "order-*", Permission::Read)?;
/// # Ok::<(), kernel_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Principal {
    name: String,
    grants: Vec<Grant>,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grants: Vec<String> = self
            .grants
            .iter()
            .map(|g| {
                format!(
                    "{:?} {} {:?}",
                    g.permission,
                    g.resource.as_str(),
                    g.pattern.as_str()
                )
            })
            .collect();
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("grants", &grants)
            .finish()
    }
}

impl Principal {
    /// A principal with no permissions.
    pub fn new(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            grants: Vec::new(),
        }
    }

    /// Grants `permission` on every `resource` whose name matches the glob `pattern`.
    /// `InvalidInput` if the pattern does not compile.
    pub fn allow(
        mut self,
        resource: Resource,
        pattern: &str,
        permission: Permission,
    ) -> Result<Principal> {
        let pattern = Glob::new(pattern)?;
        self.grants.push(Grant {
            resource,
            pattern,
            permission,
        });
        Ok(self)
    }

    /// The principal's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `access` to the `resource` called `name` is granted.
    pub fn may(&self, resource: Resource, name: &str, access: Access) -> bool {
        self.grants.iter().any(|g| {
            g.resource == resource && g.permission.allows(access) && g.pattern.matches(name)
        })
    }

    fn may_any(&self, resource: Resource, access: Access) -> bool {
        self.grants
            .iter()
            .any(|g| g.resource == resource && g.permission.allows(access))
    }

    fn check(
        &self,
        op: &'static str,
        resource: Resource,
        name: &str,
        access: Access,
    ) -> Result<()> {
        if self.may(resource, name, access) {
            return Ok(());
        }
        Err(self
            .denied(op, resource, access)
            .with_context(resource.context(), validate::escape(name)))
    }

    fn denied(&self, op: &'static str, resource: Resource, access: Access) -> Error {
        let verb = match access {
            Access::Read => "read",
            Access::Write => "write",
        };
        let principal = validate::escape(&self.name);
        tracing::info!(principal = %principal, operation = op, resource = resource.as_str(), "kernel access denied");
        Error::new(
            ErrorCode::PermissionDenied,
            format!(
                "principal {principal:?} may not {verb} this {}",
                resource.as_str()
            ),
        )
        .with_context("principal", principal)
        .with_context("operation", op)
    }

    fn readable_stream(&self, e: &RecordedEvent) -> bool {
        self.may(Resource::Stream, &e.stream, Access::Read)
    }
}

impl Layer for Principal {
    fn storage(&self, inner: Arc<dyn StorageDriver>) -> Arc<dyn StorageDriver> {
        Arc::new(AccessControl::new(inner, Arc::new(self.clone())))
    }

    fn events(&self, inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(AccessControl::new(inner, Arc::new(self.clone())))
    }

    fn locks(&self, inner: Arc<dyn Lock>) -> Arc<dyn Lock> {
        Arc::new(AccessControl::new(inner, Arc::new(self.clone())))
    }

    fn rate_limiter(&self, inner: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter> {
        Arc::new(AccessControl::new(inner, Arc::new(self.clone())))
    }
}

/// A store that only lets a principal do what it was granted.
#[derive(Debug)]
pub struct AccessControl<T: ?Sized> {
    principal: Arc<Principal>,
    inner: Arc<T>,
}

impl<T: ?Sized> Clone for AccessControl<T> {
    fn clone(&self) -> Self {
        AccessControl {
            principal: self.principal.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T: ?Sized> AccessControl<T> {
    /// Guards `inner` with `principal`'s permissions.
    pub fn new(inner: Arc<T>, principal: Arc<Principal>) -> AccessControl<T> {
        AccessControl { principal, inner }
    }

    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    fn ns(&self, op: &'static str, namespace: &str, access: Access) -> Result<()> {
        self.principal
            .check(op, Resource::Namespace, namespace, access)
    }

    fn stream(&self, op: &'static str, stream: &str, access: Access) -> Result<()> {
        self.principal.check(op, Resource::Stream, stream, access)
    }

    fn any_stream(&self, op: &'static str) -> Result<()> {
        if self.principal.may_any(Resource::Stream, Access::Read) {
            Ok(())
        } else {
            Err(self.principal.denied(op, Resource::Stream, Access::Read))
        }
    }
}

#[async_trait]
impl<T: StorageDriver + ?Sized> StorageDriver for AccessControl<T> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn status(&self) -> Result<Status> {
        self.inner.status().await
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        self.ns("get", namespace, Access::Read)?;
        self.inner.get(namespace, key).await
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        self.ns("put", namespace, Access::Write)?;
        self.inner.put(namespace, key, value, options).await
    }

    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        self.ns("delete", namespace, Access::Write)?;
        self.inner.delete(namespace, key, condition).await
    }

    async fn exists(&self, namespace: &str, key: &str) -> Result<bool> {
        self.ns("exists", namespace, Access::Read)?;
        self.inner.exists(namespace, key).await
    }

    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.ns("get_many", namespace, Access::Read)?;
        self.inner.get_many(namespace, keys).await
    }

    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        self.ns("put_many", namespace, Access::Write)?;
        self.inner.put_many(namespace, items).await
    }

    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64> {
        self.ns("delete_many", namespace, Access::Write)?;
        self.inner.delete_many(namespace, items).await
    }

    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage> {
        self.ns("list", namespace, Access::Read)?;
        self.inner.list(namespace, options).await
    }

    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>> {
        self.ns("query", namespace, Access::Read)?;
        self.inner.query(namespace, query).await
    }

    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64> {
        self.ns("count", namespace, Access::Read)?;
        self.inner.count(namespace, filter).await
    }

    async fn clear(&self, namespace: &str) -> Result<u64> {
        self.ns("clear", namespace, Access::Write)?;
        self.inner.clear(namespace).await
    }

    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        self.ns("create_namespace", namespace, Access::Write)?;
        self.inner.create_namespace(namespace, metadata).await
    }

    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool> {
        self.ns("drop_namespace", namespace, Access::Write)?;
        self.inner.drop_namespace(namespace, recursive).await
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let all = self.inner.list_namespaces().await?;
        Ok(all
            .into_iter()
            .filter(|n| {
                self.principal
                    .may(Resource::Namespace, &n.name, Access::Read)
            })
            .collect())
    }

    async fn get_metadata(&self, namespace: &str, key: &str) -> Result<Option<Metadata>> {
        self.ns("get_metadata", namespace, Access::Read)?;
        self.inner.get_metadata(namespace, key).await
    }

    async fn set_metadata(
        &self,
        namespace: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        self.ns("set_metadata", namespace, Access::Write)?;
        self.inner
            .set_metadata(namespace, key, metadata, mode)
            .await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let inner = self.inner.begin().await?;
        Ok(Box::new(GuardedTx {
            principal: self.principal.clone(),
            inner,
        }))
    }
}

/// A transaction whose every step is checked.
struct GuardedTx {
    principal: Arc<Principal>,
    inner: Box<dyn Transaction>,
}

#[async_trait]
impl Transaction for GuardedTx {
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        self.principal
            .check("tx.get", Resource::Namespace, namespace, Access::Read)?;
        self.inner.get(namespace, key).await
    }

    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        self.principal
            .check("tx.put", Resource::Namespace, namespace, Access::Write)?;
        self.inner.put(namespace, key, value, options).await
    }

    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool> {
        self.principal
            .check("tx.delete", Resource::Namespace, namespace, Access::Write)?;
        self.inner.delete(namespace, key, condition).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

#[async_trait]
impl<T: EventStore + ?Sized> EventStore for AccessControl<T> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.stream("append", stream, Access::Write)?;
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.stream("read_stream", stream, Access::Read)?;
        self.inner.read_stream(stream, options).await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.any_stream("read_all")?;
        let principal = &self.principal;
        read_all_kept(&*self.inner, after, filter, limit, |e| {
            principal.readable_stream(e)
        })
        .await
    }

    async fn head_position(&self) -> Result<u64> {
        self.any_stream("head_position")?;
        self.inner.head_position().await
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        self.any_stream("subscribe")?;
        let feed = self.inner.subscribe(after, filter).await?;
        let principal = self.principal.clone();
        Ok(feed
            .filter(move |item| {
                let keep = match item {
                    Ok(e) => principal.readable_stream(e),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed())
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        self.stream("save_snapshot", stream, Access::Write)?;
        self.inner.save_snapshot(stream, version, state).await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        self.stream("load_snapshot", stream, Access::Read)?;
        self.inner.load_snapshot(stream).await
    }
}

#[async_trait]
impl<T: Lock + ?Sized> Lock for AccessControl<T> {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        self.principal
            .check("try_acquire", Resource::LockKey, key, Access::Write)?;
        self.inner.try_acquire(key, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.principal
            .check("release", Resource::LockKey, &lease.key, Access::Write)?;
        self.inner.release(lease).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        self.principal
            .check("extend", Resource::LockKey, &lease.key, Access::Write)?;
        self.inner.extend(lease, ttl).await
    }

    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        self.principal
            .check("acquire", Resource::LockKey, key, Access::Write)?;
        self.inner.acquire(key, ttl, wait).await
    }
}

#[async_trait]
impl<T: RateLimiter + ?Sized> RateLimiter for AccessControl<T> {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        let access = if cost == 0 {
            Access::Read
        } else {
            Access::Write
        };
        self.principal
            .check("check", Resource::RateLimitKey, key, access)?;
        self.inner.check(key, quota, cost).await
    }

    async fn reset(&self, key: &str) -> Result<()> {
        self.principal
            .check("reset", Resource::RateLimitKey, key, Access::Write)?;
        self.inner.reset(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use futures::StreamExt;
    use kernel_core::{
        ErrorCode, EventFilter, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions, Quota,
        RateLimiter, ReadStream, StorageDriver, json,
    };

    use super::{AccessControl, Permission, Principal, Resource};
    use crate::layers::fault::flaky;

    fn principal() -> Arc<Principal> {
        Arc::new(
            Principal::new("svc")
                .allow(Resource::Namespace, "users*", Permission::ReadWrite)
                .unwrap()
                .allow(Resource::Namespace, "catalog", Permission::Read)
                .unwrap()
                .allow(Resource::Stream, "order-*", Permission::ReadWrite)
                .unwrap()
                .allow(Resource::Stream, "audit-*", Permission::Write)
                .unwrap()
                .allow(Resource::LockKey, "job:*", Permission::Write)
                .unwrap()
                .allow(Resource::RateLimitKey, "api:*", Permission::ReadWrite)
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn denied_operations_fail_before_any_io() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = AccessControl::new(inner.clone(), principal());
        let cases: Vec<(&str, kernel_core::Error)> = vec![
            (
                "put catalog",
                store
                    .put("catalog", "k", json!(1), PutOptions::new())
                    .await
                    .unwrap_err(),
            ),
            ("get secrets", store.get("secrets", "k").await.unwrap_err()),
            ("clear catalog", store.clear("catalog").await.unwrap_err()),
            (
                "append invoice",
                store
                    .append(
                        "invoice-1",
                        ExpectedVersion::Any,
                        vec![NewEvent::new("X", json!({}))],
                    )
                    .await
                    .unwrap_err(),
            ),
            (
                "read audit",
                store
                    .read_stream("audit-1", ReadStream::forward())
                    .await
                    .unwrap_err(),
            ),
            (
                "lock",
                store
                    .try_acquire("other", Duration::from_secs(1))
                    .await
                    .unwrap_err(),
            ),
            (
                "rate",
                store
                    .check("web:1", &Quota::per_second(1), 1)
                    .await
                    .unwrap_err(),
            ),
        ];
        for (what, e) in &cases {
            assert_eq!(e.code(), ErrorCode::PermissionDenied, "{what}: {e}");
            assert_eq!(e.context_value("principal"), Some("svc"), "{what}");
            assert!(e.context_value("operation").is_some(), "{what}");
        }
        assert_eq!(cases[1].1.context_value("namespace"), Some("secrets"));
        assert_eq!(cases[3].1.context_value("stream"), Some("invoice-1"));
        assert_eq!(inner.faults().calls(), 0, "no call reached the store");
    }

    #[tokio::test]
    async fn granted_operations_go_through() {
        let raw = MemoryDriver::new();
        let store = AccessControl::new(Arc::new(raw.clone()), principal());
        store
            .put("users", "ada", json!(1), PutOptions::new())
            .await
            .unwrap();
        store
            .put("users.archive", "ada", json!(1), PutOptions::new())
            .await
            .unwrap();
        raw.put("catalog", "item", json!(2), PutOptions::new())
            .await
            .unwrap();
        raw.put("secrets", "s", json!(3), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(
            store.get("catalog", "item").await.unwrap().unwrap().value,
            json!(2)
        );
        let names: Vec<_> = store
            .list_namespaces()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, vec!["catalog", "users", "users.archive"]);
        // Write-only streams can be appended but not read.
        store
            .append(
                "audit-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Seen", json!({}))],
            )
            .await
            .unwrap();
        store
            .append(
                "order-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Placed", json!({}))],
            )
            .await
            .unwrap();
        let all = store.read_all(0, &EventFilter::all(), 10).await.unwrap();
        assert_eq!(all.len(), 1, "audit events are not readable");
        assert_eq!(all[0].stream, "order-1");
        let mut feed = store.subscribe(0, EventFilter::all()).await.unwrap();
        assert_eq!(feed.next().await.unwrap().unwrap().stream, "order-1");
        let lease = store
            .try_acquire("job:nightly", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        store.release(&lease).await.unwrap();
        assert!(
            store
                .check("api:1", &Quota::per_second(1), 0)
                .await
                .unwrap()
                .allowed
        );
    }

    #[tokio::test]
    async fn transactions_check_every_step() {
        let store = AccessControl::new(Arc::new(MemoryDriver::new()), principal());
        let mut tx = store.begin().await.unwrap();
        tx.put("users", "a", json!(1), PutOptions::new())
            .await
            .unwrap();
        let e = tx
            .put("catalog", "a", json!(1), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(e.context_value("operation"), Some("tx.put"));
        tx.commit().await.unwrap();
        assert!(store.exists("users", "a").await.unwrap());
    }

    #[tokio::test]
    async fn a_principal_without_stream_reads_cannot_read_the_log() {
        let p = Arc::new(
            Principal::new("writer")
                .allow(Resource::Stream, "*", Permission::Write)
                .unwrap(),
        );
        let store = AccessControl::new(Arc::new(MemoryDriver::new()), p);
        for e in [
            store.read_all(0, &EventFilter::all(), 1).await.unwrap_err(),
            store.head_position().await.unwrap_err(),
            store.subscribe(0, EventFilter::all()).await.err().unwrap(),
        ] {
            assert_eq!(e.code(), ErrorCode::PermissionDenied);
        }
        assert!(format!("{:?}", store.principal()).contains("writer"));
    }
}
