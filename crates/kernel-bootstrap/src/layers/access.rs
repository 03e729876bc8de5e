//! Access control: a [`Principal`] holds read / write permissions on patterns of namespaces,
//! streams, lock keys and rate-limit keys ([`kernel_core::Glob`] patterns: `*`, `?`, `\`
//! escapes). Every operation is checked before any I/O; a denied one is
//! [`ErrorCode::PermissionDenied`] naming the principal, the operation and what it touched.
//!
//! | operation | needs |
//! |---|---|
//! | `get`, `exists`, `get_many`, `list`, `query`, `count`, `get_metadata`, `tx.get` | read on the namespace |
//! | `put`, `delete`, `put_many`, `delete_many`, `clear`, `create_namespace`, `drop_namespace`, `set_metadata`, `tx.put`, `tx.delete` | write on the namespace |
//! | `list_namespaces` | nothing: it lists only namespaces the principal may read |
//! | `status`, `capabilities`, `begin`, `tx.commit`, `tx.rollback` | nothing (each transaction step is checked) |
//! | `append`, `save_snapshot` | write on the stream |
//! | `read_stream`, `load_snapshot` | read on the stream |
//! | `read_all`, `subscribe`, `head_position` | read on at least one stream pattern; events of streams the principal may not read are left out |
//! | lock `try_acquire`, `acquire`, `release`, `extend` | write on the lock key |
//! | rate-limit `check` with cost > 0, `reset` | write on the key; a cost-0 check (a peek) needs read |
//!
//! Whether an operation reads or writes comes from the operation table, [`super::ops`], that
//! every layer shares; in particular a cost-0 rate-limit `check` only peeks, so it is a read.
//!
//! Permissions are checked against the names the caller uses. Stacked over a
//! [`super::tenant::TenantScope`], that means patterns are written without the tenant prefix.
//!
//! [`Principal`] is a [`ScopePolicy`] that renames nothing: [`AccessControl`] is the generic
//! [`Scoped`] wrapper driven by it, and `stores.layer(&principal)` guards all four stores.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use kernel_core::{Error, ErrorCode, Glob, NamespaceInfo, RecordedEvent, Result, Status, validate};

use super::scope::{ScopePolicy, Scoped};
use super::{Access, Op};
use crate::config::Role;

/// A store that only lets a principal do what it was granted: a [`Scoped`] store with the
/// [`Principal`] policy.
pub type AccessControl<T> = Scoped<Principal, T>;

impl<T: ?Sized> Scoped<Principal, T> {
    /// The principal.
    pub fn principal(&self) -> &Principal {
        self.policy()
    }
}

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

    fn denied(&self, op: &Op<'_>, resource: Resource) -> Error {
        let verb = match op.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        let principal = validate::escape(&self.name);
        tracing::info!(
            principal = %principal,
            operation = op.name,
            resource = resource.as_str(),
            "kernel access denied"
        );
        op.annotate(
            Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "principal {principal:?} may not {verb} this {}",
                    resource.as_str()
                ),
            )
            .with_context("principal", principal),
        )
    }
}

#[deny(clippy::missing_trait_methods)]
impl ScopePolicy for Principal {
    fn tenant(&self) -> Option<&Arc<str>> {
        // Permissions only: the tenant, if any, comes from a Tenant scope below.
        None
    }

    fn check(&self, op: &Op<'_>) -> Result<()> {
        let (resource, name) = match op.role {
            Role::Storage => (Resource::Namespace, op.namespace),
            Role::Events => (Resource::Stream, op.stream),
            Role::Locks => (Resource::LockKey, op.key),
            Role::RateLimits => (Resource::RateLimitKey, op.key),
        };
        let allowed = match name {
            Some(name) => self.may(resource, name, op.access),
            // `status`, `begin`, `list_namespaces` and the end of a transaction touch no
            // namespace's data: the listing is filtered and each transaction step is checked.
            None if op.role == Role::Storage => true,
            // The global log (`read_all`, `subscribe`, `head_position`) is open to a principal
            // who may read some stream; the events of the others are left out.
            None => self.may_any(resource, op.access),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.denied(op, resource))
        }
    }

    fn namespace_in<'n>(&self, namespace: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(namespace))
    }

    fn stream_in<'n>(&self, stream: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(stream))
    }

    fn category_in<'n>(&self, category: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(category))
    }

    fn lock_key_in<'n>(&self, key: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(key))
    }

    fn rate_limit_key_in<'n>(&self, key: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(key))
    }

    fn keep_namespace(&self, info: &mut NamespaceInfo) -> bool {
        self.may(Resource::Namespace, &info.name, Access::Read)
    }

    fn keep_event(&self, event: &mut RecordedEvent) -> bool {
        self.may(Resource::Stream, &event.stream, Access::Read)
    }

    fn status_out(&self, _status: &mut Status) {
        // The backend's health and size are not any one namespace's data.
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
        let store = AccessControl::shared(inner.clone(), principal());
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
            assert!(e.operation().is_some(), "{what}");
        }
        assert_eq!(cases[1].1.context_value("namespace"), Some("secrets"));
        assert_eq!(cases[3].1.context_value("stream"), Some("invoice-1"));
        assert_eq!(inner.faults().calls(), 0, "no call reached the store");
    }

    #[tokio::test]
    async fn granted_operations_go_through() {
        let raw = MemoryDriver::new();
        let store = AccessControl::shared(Arc::new(raw.clone()), principal());
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
        let store = AccessControl::shared(Arc::new(MemoryDriver::new()), principal());
        let mut tx = store.begin().await.unwrap();
        tx.put("users", "a", json!(1), PutOptions::new())
            .await
            .unwrap();
        let e = tx
            .put("catalog", "a", json!(1), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(e.operation(), Some("tx.put"));
        tx.commit().await.unwrap();
        assert!(store.exists("users", "a").await.unwrap());
    }

    #[tokio::test]
    async fn a_cost_0_check_is_a_read() {
        let p = Principal::new("dashboard")
            .allow(Resource::RateLimitKey, "api:*", Permission::Read)
            .unwrap();
        let store = AccessControl::new(Arc::new(MemoryDriver::new()), p);
        let q = Quota::per_second(5);
        assert_eq!(store.check("api:1", &q, 0).await.unwrap().remaining, 5);
        let e = store.check("api:1", &q, 1).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(e.operation(), Some("check"));
        assert_eq!(e.context_value("key"), Some("api:1"));
        assert!(e.to_string().contains("may not write"), "{e}");
    }

    #[tokio::test]
    async fn a_principal_without_stream_reads_cannot_read_the_log() {
        let p = Arc::new(
            Principal::new("writer")
                .allow(Resource::Stream, "*", Permission::Write)
                .unwrap(),
        );
        let store = AccessControl::shared(Arc::new(MemoryDriver::new()), p);
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
