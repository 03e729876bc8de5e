//! Tenant scoping: every namespace, stream, lock key and rate-limit key a caller names is moved
//! into the tenant's own space before it reaches the store, and every name coming back is
//! moved out again, so two tenants on one backend never see each other's data.
//!
//! The rewrite stays inside the kernel's input rules, so it works on every driver:
//!
//! | caller's name | stored as (tenant `acme`) | why this shape |
//! |---|---|---|
//! | namespace `users` | `t_acme.users` | a valid namespace; `.` cannot occur in a tenant id, so the split is unambiguous |
//! | stream `order-42` | `t_acme.order-42` | still `category-id`: the category becomes `t_acme.order`, so category filters and subscriptions work per tenant |
//! | category `order` (event filters) | `t_acme.order` | matches the rewritten streams |
//! | lock key / rate-limit key `k` | `t_acme.k` | keys are free-form; the prefix makes them disjoint |
//!
//! Caller's names are checked against the input rules first (a namespace starting with
//! `_kernel` is still refused), then the prefixed name must fit the length limits: inside a
//! tenant a namespace or stream has `128 - len("t_<id>.")` bytes.
//!
//! Reads that cross namespaces or streams are confined too: `list_namespaces` lists only the
//! tenant's namespaces; `read_all` and `subscribe` return only the tenant's events (with
//! categories in the filter they ask the store for the tenant's categories; without, they
//! filter). `status` drops the backend-wide entry and namespace counts. What is not hidden: the
//! global event position is shared, so a tenant sees gaps where other tenants' events are, and
//! errors from the store name the stored (prefixed) names of the tenant's own data.
//!
//! Unscoped access (the kernel's own stores) sees every tenant's data under the prefixed names;
//! keep names starting with `t_` out of unscoped use.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kernel_core::{
    AppendResult, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, EventFilter,
    EventStore, EventSubscription, ExpectedVersion, Filter, Lease, ListOptions, ListPage, Lock,
    Metadata, MetadataMode, NamespaceInfo, NewEvent, PutOptions, Query, Quota, RateDecision,
    RateLimiter, ReadStream, RecordedEvent, Result, Snapshot, Status, StorageDriver, Transaction,
    Value, validate,
};

use super::{Layer, read_all_kept};

/// A validated tenant id: 1..=32 bytes of `[A-Za-z0-9_]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    id: String,
    prefix: String,
}

impl Tenant {
    /// Longest tenant id, in bytes.
    pub const MAX_ID_LEN: usize = 32;

    /// A tenant; `InvalidInput` naming the id if it breaks the rule.
    pub fn new(id: impl Into<String>) -> Result<Tenant> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= Tenant::MAX_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(Error::invalid_input(format!(
                "tenant id must be 1..={} bytes of A-Z, a-z, 0-9 and '_'",
                Tenant::MAX_ID_LEN
            ))
            .with_context("tenant", validate::escape(&id)));
        }
        let prefix = format!("t_{id}.");
        Ok(Tenant { id, prefix })
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The prefix every stored name of this tenant starts with (`t_<id>.`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn fit(&self, what: &'static str, name: &str, limit: usize) -> Result<String> {
        let room = limit - self.prefix.len();
        if name.len() > room {
            return Err(Error::invalid_input(format!(
                "{what} is {} bytes; inside a tenant the limit is {room} (the tenant prefix \
                 takes {})",
                name.len(),
                self.prefix.len()
            ))
            .with_context(what, validate::escape(name))
            .with_context("tenant", &self.id));
        }
        Ok(format!("{}{name}", self.prefix))
    }

    /// The stored name of a namespace.
    pub fn namespace(&self, namespace: &str) -> Result<String> {
        validate::namespace(namespace)?;
        self.fit("namespace", namespace, validate::MAX_NAMESPACE_LEN)
    }

    /// The stored name of a stream.
    pub fn stream(&self, stream: &str) -> Result<String> {
        validate::stream(stream)?;
        self.fit("stream", stream, validate::MAX_NAMESPACE_LEN)
    }

    fn category(&self, category: &str) -> Result<String> {
        validate::category(category)?;
        self.fit("category", category, validate::MAX_NAMESPACE_LEN)
    }

    /// The stored form of a lock key.
    pub fn lock_key(&self, key: &str) -> Result<String> {
        validate::lock_key(key)?;
        self.fit("key", key, validate::MAX_KEY_LEN)
    }

    /// The stored form of a rate-limit key.
    pub fn rate_limit_key(&self, key: &str) -> Result<String> {
        validate::rate_limit_key(key)?;
        self.fit("key", key, validate::MAX_KEY_LEN)
    }

    /// The caller's name for a stored name, if it belongs to this tenant.
    pub fn strip<'a>(&self, stored: &'a str) -> Option<&'a str> {
        stored.strip_prefix(self.prefix.as_str())
    }

    fn filter(&self, filter: &EventFilter) -> Result<EventFilter> {
        let mut mapped = filter.clone();
        mapped.categories = filter
            .categories
            .iter()
            .map(|c| self.category(c))
            .collect::<Result<_>>()?;
        Ok(mapped)
    }

    /// Keeps an event of this tenant (renaming its stream back), drops any other.
    fn own_event(&self, e: &mut RecordedEvent) -> bool {
        match self.strip(&e.stream) {
            Some(name) => {
                e.stream = name.to_owned();
                true
            }
            None => false,
        }
    }

    fn lease_in(&self, lease: &Lease) -> Result<Lease> {
        Ok(Lease {
            key: self.lock_key(&lease.key)?,
            ..lease.clone()
        })
    }
}

impl Layer for Tenant {
    fn storage(&self, inner: Arc<dyn StorageDriver>) -> Arc<dyn StorageDriver> {
        Arc::new(TenantScope::new(inner, self.clone()))
    }

    fn events(&self, inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(TenantScope::new(inner, self.clone()))
    }

    fn locks(&self, inner: Arc<dyn Lock>) -> Arc<dyn Lock> {
        Arc::new(TenantScope::new(inner, self.clone()))
    }

    fn rate_limiter(&self, inner: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter> {
        Arc::new(TenantScope::new(inner, self.clone()))
    }
}

/// A store confined to one tenant.
#[derive(Debug)]
pub struct TenantScope<T: ?Sized> {
    tenant: Tenant,
    inner: Arc<T>,
}

impl<T: ?Sized> Clone for TenantScope<T> {
    fn clone(&self) -> Self {
        TenantScope {
            tenant: self.tenant.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T: ?Sized> TenantScope<T> {
    /// Confines `inner` to `tenant`.
    pub fn new(inner: Arc<T>, tenant: Tenant) -> TenantScope<T> {
        TenantScope { tenant, inner }
    }

    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }
}

fn named(mut entry: Entry, namespace: &str) -> Entry {
    namespace.clone_into(&mut entry.namespace);
    entry
}

#[async_trait]
impl<T: StorageDriver + ?Sized> StorageDriver for TenantScope<T> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn status(&self) -> Result<Status> {
        let mut status = self.inner.status().await?;
        // Backend-wide counts would tell one tenant about the others.
        status.namespaces = None;
        status.entries = None;
        status
            .details
            .insert("tenant".to_owned(), self.tenant.id.clone());
        Ok(status)
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let ns = self.tenant.namespace(namespace)?;
        Ok(self.inner.get(&ns, key).await?.map(|e| named(e, namespace)))
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let ns = self.tenant.namespace(namespace)?;
        let entry = self.inner.put(&ns, key, value, options).await?;
        Ok(named(entry, namespace))
    }

    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.delete(&ns, key, condition).await
    }

    async fn exists(&self, namespace: &str, key: &str) -> Result<bool> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.exists(&ns, key).await
    }

    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let ns = self.tenant.namespace(namespace)?;
        let entries = self.inner.get_many(&ns, keys).await?;
        Ok(entries
            .into_iter()
            .map(|e| e.map(|e| named(e, namespace)))
            .collect())
    }

    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        let ns = self.tenant.namespace(namespace)?;
        let entries = self.inner.put_many(&ns, items).await?;
        Ok(entries.into_iter().map(|e| named(e, namespace)).collect())
    }

    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.delete_many(&ns, items).await
    }

    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage> {
        let ns = self.tenant.namespace(namespace)?;
        let mut page = self.inner.list(&ns, options).await?;
        page.entries = page
            .entries
            .into_iter()
            .map(|e| named(e, namespace))
            .collect();
        Ok(page)
    }

    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>> {
        let ns = self.tenant.namespace(namespace)?;
        let entries = self.inner.query(&ns, query).await?;
        Ok(entries.into_iter().map(|e| named(e, namespace)).collect())
    }

    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.count(&ns, filter).await
    }

    async fn clear(&self, namespace: &str) -> Result<u64> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.clear(&ns).await
    }

    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        let ns = self.tenant.namespace(namespace)?;
        let mut info = self.inner.create_namespace(&ns, metadata).await?;
        namespace.clone_into(&mut info.name);
        Ok(info)
    }

    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.drop_namespace(&ns, recursive).await
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let all = self.inner.list_namespaces().await?;
        Ok(all
            .into_iter()
            .filter_map(|mut info| {
                let name = self.tenant.strip(&info.name)?.to_owned();
                info.name = name;
                Some(info)
            })
            .collect())
    }

    async fn get_metadata(&self, namespace: &str, key: &str) -> Result<Option<Metadata>> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.get_metadata(&ns, key).await
    }

    async fn set_metadata(
        &self,
        namespace: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        let ns = self.tenant.namespace(namespace)?;
        let entry = self.inner.set_metadata(&ns, key, metadata, mode).await?;
        Ok(named(entry, namespace))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let inner = self.inner.begin().await?;
        Ok(Box::new(TenantTx {
            tenant: self.tenant.clone(),
            inner,
        }))
    }
}

/// A transaction confined to a tenant.
struct TenantTx {
    tenant: Tenant,
    inner: Box<dyn Transaction>,
}

#[async_trait]
impl Transaction for TenantTx {
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let ns = self.tenant.namespace(namespace)?;
        Ok(self.inner.get(&ns, key).await?.map(|e| named(e, namespace)))
    }

    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let ns = self.tenant.namespace(namespace)?;
        let entry = self.inner.put(&ns, key, value, options).await?;
        Ok(named(entry, namespace))
    }

    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool> {
        let ns = self.tenant.namespace(namespace)?;
        self.inner.delete(&ns, key, condition).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

#[async_trait]
impl<T: EventStore + ?Sized> EventStore for TenantScope<T> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let s = self.tenant.stream(stream)?;
        self.inner.append(&s, expected, events).await
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        let s = self.tenant.stream(stream)?;
        let mut events = self.inner.read_stream(&s, options).await?;
        for e in &mut events {
            stream.clone_into(&mut e.stream);
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mapped = self.tenant.filter(filter)?;
        read_all_kept(&*self.inner, after, &mapped, limit, |e| {
            self.tenant.own_event(e)
        })
        .await
    }

    async fn head_position(&self) -> Result<u64> {
        self.inner.head_position().await
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        let mapped = self.tenant.filter(&filter)?;
        let feed = self.inner.subscribe(after, mapped).await?;
        let tenant = self.tenant.clone();
        Ok(feed
            .filter_map(move |item| {
                let kept = match item {
                    Ok(mut e) => tenant.own_event(&mut e).then_some(Ok(e)),
                    Err(err) => Some(Err(err)),
                };
                futures::future::ready(kept)
            })
            .boxed())
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        let s = self.tenant.stream(stream)?;
        self.inner.save_snapshot(&s, version, state).await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let s = self.tenant.stream(stream)?;
        Ok(self.inner.load_snapshot(&s).await?.map(|mut snap| {
            stream.clone_into(&mut snap.stream);
            snap
        }))
    }
}

#[async_trait]
impl<T: Lock + ?Sized> Lock for TenantScope<T> {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        let k = self.tenant.lock_key(key)?;
        Ok(self.inner.try_acquire(&k, ttl).await?.map(|mut lease| {
            key.clone_into(&mut lease.key);
            lease
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let stored = self.tenant.lease_in(lease)?;
        self.inner.release(&stored).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let stored = self.tenant.lease_in(lease)?;
        let mut extended = self.inner.extend(&stored, ttl).await?;
        extended.key.clone_from(&lease.key);
        Ok(extended)
    }

    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let k = self.tenant.lock_key(key)?;
        let mut lease = self.inner.acquire(&k, ttl, wait).await?;
        key.clone_into(&mut lease.key);
        Ok(lease)
    }
}

#[async_trait]
impl<T: RateLimiter + ?Sized> RateLimiter for TenantScope<T> {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        let k = self.tenant.rate_limit_key(key)?;
        self.inner.check(&k, quota, cost).await
    }

    async fn reset(&self, key: &str) -> Result<()> {
        let k = self.tenant.rate_limit_key(key)?;
        self.inner.reset(&k).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use futures::StreamExt;
    use kernel_core::{
        ErrorCode, EventFilter, EventStore, ExpectedVersion, ListOptions, Lock, NewEvent,
        PutOptions, Quota, RateLimiter, ReadStream, StorageDriver, json,
    };

    use super::{Tenant, TenantScope};

    fn two_tenants() -> (
        MemoryDriver,
        TenantScope<MemoryDriver>,
        TenantScope<MemoryDriver>,
    ) {
        let shared = MemoryDriver::new();
        let inner = Arc::new(shared.clone());
        (
            shared,
            TenantScope::new(inner.clone(), Tenant::new("acme").unwrap()),
            TenantScope::new(inner, Tenant::new("globex").unwrap()),
        )
    }

    #[test]
    fn tenant_ids_are_checked() {
        for bad in ["", "a.b", "a-b", "a b", &"x".repeat(33)] {
            let e = Tenant::new(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidInput, "{bad}");
            assert!(e.context_value("tenant").is_some());
        }
        assert_eq!(Tenant::new("Acme_1").unwrap().prefix(), "t_Acme_1.");
    }

    #[tokio::test]
    async fn documents_never_cross_tenants() {
        let (raw, acme, globex) = two_tenants();
        let e = acme
            .put("users", "ada", json!({"plan": "pro"}), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(e.namespace, "users", "the caller sees its own names");
        globex
            .put("users", "bob", json!({}), PutOptions::new())
            .await
            .unwrap();
        assert!(globex.get("users", "ada").await.unwrap().is_none());
        assert!(!globex.exists("users", "ada").await.unwrap());
        assert_eq!(acme.count("users", None).await.unwrap(), 1);
        let keys: Vec<_> = acme
            .list("users", &ListOptions::new())
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.namespace, e.key))
            .collect();
        assert_eq!(keys, vec![("users".to_string(), "ada".to_string())]);
        assert_eq!(globex.clear("users").await.unwrap(), 1);
        assert!(acme.get("users", "ada").await.unwrap().is_some());
        // Stored under the prefixed name.
        assert!(raw.get("t_acme.users", "ada").await.unwrap().is_some());
        raw.put("plain", "k", json!(1), PutOptions::new())
            .await
            .unwrap();
        let names: Vec<_> = acme
            .list_namespaces()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, vec!["users"]);
        let status = acme.status().await.unwrap();
        assert_eq!(status.entries, None);
    }

    #[tokio::test]
    async fn transactions_stay_in_the_tenant() {
        let (_raw, acme, globex) = two_tenants();
        let mut tx = acme.begin().await.unwrap();
        let e = tx
            .put("acct", "a", json!(1), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(e.namespace, "acct");
        assert_eq!(
            tx.get("acct", "a").await.unwrap().unwrap().namespace,
            "acct"
        );
        tx.commit().await.unwrap();
        assert!(acme.exists("acct", "a").await.unwrap());
        assert!(!globex.exists("acct", "a").await.unwrap());
    }

    #[tokio::test]
    async fn input_rules_still_apply_and_the_prefix_counts() {
        let (_raw, acme, _) = two_tenants();
        for bad in ["_kernel_meta", "has space", ""] {
            let e = acme.get(bad, "k").await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidInput, "{bad}");
        }
        let room = 128 - "t_acme.".len();
        assert!(acme.get(&"n".repeat(room), "k").await.is_ok());
        let e = acme.get(&"n".repeat(room + 1), "k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert!(e.to_string().contains("inside a tenant"), "{e}");
    }

    #[tokio::test]
    async fn events_and_categories_are_per_tenant() {
        let (raw, acme, globex) = two_tenants();
        let placed = || vec![NewEvent::new("Placed", json!({}))];
        acme.append("order-1", ExpectedVersion::NoStream, placed())
            .await
            .unwrap();
        globex
            .append("order-1", ExpectedVersion::NoStream, placed())
            .await
            .unwrap();
        globex
            .append("order-2", ExpectedVersion::NoStream, placed())
            .await
            .unwrap();
        acme.append("invoice-9", ExpectedVersion::NoStream, placed())
            .await
            .unwrap();
        let mine = acme
            .read_stream("order-1", ReadStream::forward())
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].stream, "order-1");
        assert_eq!(mine[0].category(), "order");
        let all = acme.read_all(0, &EventFilter::all(), 10).await.unwrap();
        let streams: Vec<_> = all.iter().map(|e| e.stream.as_str()).collect();
        assert_eq!(streams, vec!["order-1", "invoice-9"]);
        // With limit 1, paging skips the other tenant's events instead of returning nothing.
        let first = acme.read_all(1, &EventFilter::all(), 1).await.unwrap();
        assert_eq!(first[0].stream, "invoice-9");
        let orders = globex
            .read_all(0, &EventFilter::all().category("order"), 10)
            .await
            .unwrap();
        assert_eq!(orders.len(), 2);
        assert!(orders.iter().all(|e| e.category() == "order"));
        assert_eq!(
            raw.read_all(0, &EventFilter::all(), 10)
                .await
                .unwrap()
                .len(),
            4
        );

        let mut feed = acme.subscribe(0, EventFilter::all()).await.unwrap();
        let a = feed.next().await.unwrap().unwrap();
        let b = feed.next().await.unwrap().unwrap();
        assert_eq!(
            (a.stream.as_str(), b.stream.as_str()),
            ("order-1", "invoice-9")
        );
        globex
            .append("order-3", ExpectedVersion::NoStream, placed())
            .await
            .unwrap();
        acme.append("order-4", ExpectedVersion::NoStream, placed())
            .await
            .unwrap();
        let live = tokio::time::timeout(Duration::from_secs(2), feed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(live.stream, "order-4", "globex's order-3 is skipped");

        acme.save_snapshot("order-1", 1, json!({"n": 1}))
            .await
            .unwrap();
        assert_eq!(
            acme.load_snapshot("order-1").await.unwrap().unwrap().stream,
            "order-1"
        );
        assert!(globex.load_snapshot("order-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn locks_and_rate_limits_are_per_tenant() {
        let (_raw, acme, globex) = two_tenants();
        let ttl = Duration::from_secs(5);
        let lease = acme.try_acquire("job", ttl).await.unwrap().unwrap();
        assert_eq!(lease.key, "job");
        let other = globex.try_acquire("job", ttl).await.unwrap();
        assert!(
            other.is_some(),
            "the same key in another tenant is another lock"
        );
        assert!(acme.try_acquire("job", ttl).await.unwrap().is_none());
        let extended = acme.extend(&lease, ttl).await.unwrap();
        assert_eq!(extended.key, "job");
        acme.release(&extended).await.unwrap();
        let e = globex.release(&lease).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::LockNotHeld);

        let q = Quota::new(1, Duration::from_secs(60));
        assert!(acme.check("api", &q, 1).await.unwrap().allowed);
        assert!(!acme.check("api", &q, 1).await.unwrap().allowed);
        assert!(globex.check("api", &q, 1).await.unwrap().allowed);
        acme.reset("api").await.unwrap();
        assert!(acme.check("api", &q, 1).await.unwrap().allowed);
    }
}
