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
//!
//! [`Tenant`] is a [`ScopePolicy`]: [`TenantScope`] is the generic [`Scoped`] wrapper driven by
//! it, and `stores.layer(&tenant)` scopes all four stores. Errors the scope raises itself (a
//! name that breaks the input rules or does not fit beside the prefix) name the operation and
//! the caller's name.

use std::borrow::Cow;
use std::sync::Arc;

use kernel_core::{Error, NamespaceInfo, RecordedEvent, Result, Status, validate};

use super::Op;
use super::scope::{ScopePolicy, Scoped};

/// A store confined to one tenant: a [`Scoped`] store with the [`Tenant`] policy.
pub type TenantScope<T> = Scoped<Tenant, T>;

impl<T: ?Sized> Scoped<Tenant, T> {
    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        self.policy()
    }
}

/// A validated tenant id: 1..=32 bytes of `[A-Za-z0-9_]`. As a [`ScopePolicy`] it moves every
/// name into the tenant's space; as a [`super::Layer`] it scopes all four stores.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kernel_core::Result<()> {
/// use std::sync::Arc;
///
/// use driver_memory::MemoryDriver;
/// use kernel_bootstrap::layers::tenant::{Tenant, TenantScope};
/// use kernel_core::{json, PutOptions, StorageDriver};
///
/// let shared = Arc::new(MemoryDriver::new());
/// let acme = TenantScope::new(shared.clone(), Tenant::new("acme")?);
/// let entry = acme.put("users", "ada", json!({}), PutOptions::new()).await?;
/// assert_eq!(entry.namespace, "users");
/// assert!(shared.get("t_acme.users", "ada").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    id: String,
    prefix: String,
    /// The id as the calls below carry it ([`kernel_core::tenancy`]).
    scope_id: Arc<str>,
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
        let scope_id = Arc::from(id.as_str());
        Ok(Tenant {
            id,
            prefix,
            scope_id,
        })
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
        let room = limit.saturating_sub(self.prefix.len());
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

    /// The stored name of an event category (the category of the stored streams).
    pub fn category(&self, category: &str) -> Result<String> {
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

    /// Renames a stored name to the caller's, or says it is another tenant's.
    fn own(&self, stored: &mut String) -> bool {
        if !stored.starts_with(self.prefix.as_str()) {
            return false;
        }
        stored.drain(..self.prefix.len());
        true
    }
}

#[deny(clippy::missing_trait_methods)]
impl ScopePolicy for Tenant {
    fn tenant(&self) -> Option<&Arc<str>> {
        // A driver that enforces tenants itself (PostgreSQL with row-level security) learns
        // whose call it is; the names are moved into the tenant's space all the same.
        Some(&self.scope_id)
    }

    fn check(&self, _op: &Op<'_>) -> Result<()> {
        // Confinement is by name alone: every name is moved into the tenant's space below.
        Ok(())
    }

    fn namespace_in<'n>(&self, namespace: &'n str) -> Result<Cow<'n, str>> {
        self.namespace(namespace).map(Cow::Owned)
    }

    fn stream_in<'n>(&self, stream: &'n str) -> Result<Cow<'n, str>> {
        self.stream(stream).map(Cow::Owned)
    }

    fn category_in<'n>(&self, category: &'n str) -> Result<Cow<'n, str>> {
        self.category(category).map(Cow::Owned)
    }

    fn lock_key_in<'n>(&self, key: &'n str) -> Result<Cow<'n, str>> {
        self.lock_key(key).map(Cow::Owned)
    }

    fn rate_limit_key_in<'n>(&self, key: &'n str) -> Result<Cow<'n, str>> {
        self.rate_limit_key(key).map(Cow::Owned)
    }

    fn keep_namespace(&self, info: &mut NamespaceInfo) -> bool {
        self.own(&mut info.name)
    }

    fn keep_event(&self, event: &mut RecordedEvent) -> bool {
        self.own(&mut event.stream)
    }

    fn status_out(&self, status: &mut Status) {
        // Backend-wide counts would tell one tenant about the others.
        status.namespaces = None;
        status.entries = None;
        status.details.insert("tenant".to_owned(), self.id.clone());
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
        // The error names the operation and the caller's names, not the stored ones.
        assert_eq!(e.operation(), Some("get"));
        assert_eq!(e.context_value("key"), Some("k"));
        let e = acme
            .try_acquire("", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert_eq!(e.operation(), Some("try_acquire"));
        let e = acme
            .read_all(0, &EventFilter::all().category("bad-category"), 1)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.operation()),
            (ErrorCode::InvalidInput, Some("read_all"))
        );
        assert_eq!(e.context_value("category"), Some("bad-category"));
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
