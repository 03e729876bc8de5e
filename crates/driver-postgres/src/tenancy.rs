//! Row-level security per tenant ([`crate::Tenancy::Rls`]): the `kernel.tenant` setting of
//! every connection a call uses, and the check at connect that the database enforces it.
//!
//! The setting is made on the session when a call takes a connection from the pool, from
//! [`kernel_core::tenancy::current`] (cleared when the call has no tenant), so a connection
//! never carries the previous call's tenant into the next one. A session setting rather than a
//! transaction-local one: the driver's single statements run outside explicit transactions, and
//! one statement more per call costs less than wrapping each in `BEGIN` / `COMMIT`.

use kernel_core::{Error, Result};
use tokio_postgres::types::Type;

use crate::config::Tenancy;
use crate::error::{self, BACKEND};

/// Sets (or clears, with `None`) the tenant of the session.
pub(crate) async fn enter(client: &tokio_postgres::Client, tenant: Option<&str>) -> Result<()> {
    client
        .query_typed(
            "SELECT set_config('kernel.tenant', $1, false)",
            &[(&tenant.unwrap_or(""), Type::TEXT)],
        )
        .await
        .map_err(|e| {
            error::pg(e)
                .with_context("setting", "kernel.tenant")
                .with_context("tenant", tenant.unwrap_or("(none)"))
        })?;
    Ok(())
}

/// What the database says about row-level security on the kernel's tables, for this role.
struct RowSecurity {
    /// Tables with it off.
    off: Vec<String>,
    /// Tables with it on.
    on: usize,
    /// Whether the connected role is exempt (superuser, BYPASSRLS, or owner of the tables).
    exempt: bool,
}

async fn row_security(client: &tokio_postgres::Client) -> Result<Option<RowSecurity>> {
    let has_view = client
        .query_typed_one("SELECT to_regclass('kernel_row_security') IS NOT NULL", &[])
        .await
        .map_err(error::pg)?
        .try_get::<_, bool>(0)
        .map_err(error::pg)?;
    if !has_view {
        return Ok(None);
    }
    let rows = client
        .query_typed(
            "SELECT r.table_name, r.enabled, \
               (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) \
               OR pg_has_role(current_user, c.relowner, 'USAGE') \
             FROM kernel_row_security r JOIN pg_class c ON c.oid = to_regclass(r.table_name)",
            &[],
        )
        .await
        .map_err(error::pg)?;
    let mut state = RowSecurity {
        off: Vec::new(),
        on: 0,
        exempt: true,
    };
    for row in rows {
        let table: String = row.try_get(0).map_err(error::pg)?;
        let enabled: bool = row.try_get(1).map_err(error::pg)?;
        let exempt: Option<bool> = row.try_get(2).map_err(error::pg)?;
        state.exempt &= exempt.unwrap_or(false);
        if enabled {
            state.on += 1;
        } else {
            state.off.push(table);
        }
    }
    Ok(Some(state))
}

/// At connect: with [`Tenancy::Rls`], row-level security must be on for every kernel table
/// (the driver turns it on when `may_migrate`); with [`Tenancy::Off`], a role that row-level
/// security applies to would see nothing, which is refused too. Both are `Config` errors
/// naming `postgres.tenancy` and saying what to do.
pub(crate) async fn check(
    client: &tokio_postgres::Client,
    tenancy: Tenancy,
    may_migrate: bool,
) -> Result<()> {
    let state = row_security(client).await?;
    match (tenancy, state) {
        (Tenancy::Rls, None) => Err(Error::config(
            "postgres.tenancy",
            "tenancy = rls needs the schema of migration 0007 (tenant columns and policies), \
             which this database lacks: run `kernelctl migrate up`",
        )
        .with_context("backend", BACKEND)),
        (Tenancy::Rls, Some(state)) if !state.off.is_empty() => {
            if may_migrate {
                client
                    .batch_execute("SELECT kernel_enable_row_security()")
                    .await
                    .map_err(|e| {
                        Error::config(
                            "postgres.tenancy",
                            "tenancy = rls: row-level security is off on the kernel's tables \
                             and this role cannot turn it on (it needs the tables' owner): run \
                             `SELECT kernel_enable_row_security()` as the owner",
                        )
                        .with_source(error::pg(e))
                        .with_context("backend", BACKEND)
                        .with_context("tables", state.off.join(", "))
                    })?;
                tracing::info!(tables = %state.off.join(", "), "row-level security turned on");
                Ok(())
            } else {
                Err(Error::config(
                    "postgres.tenancy",
                    "tenancy = rls but row-level security is off on some of the kernel's \
                     tables and migrate_on_boot is off: run `SELECT kernel_enable_row_security()` \
                     as the tables' owner (or connect once with migrate_on_boot)",
                )
                .with_context("backend", BACKEND)
                .with_context("tables", state.off.join(", ")))
            }
        }
        (Tenancy::Off, Some(state)) if state.on > 0 && !state.exempt => Err(Error::config(
            "postgres.tenancy",
            "row-level security is on for the kernel's tables and this role is subject to it, \
             so without tenancy = rls every call would see nothing: set postgres.tenancy = rls \
             (KERNEL_POSTGRES_TENANCY=rls) and use tenant-scoped stores, or connect as a role \
             that owns the tables or has BYPASSRLS",
        )
        .with_context("backend", BACKEND)),
        _ => Ok(()),
    }
}
