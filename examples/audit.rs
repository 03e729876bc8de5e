//! An audit trail: every write through a service's stores is recorded in the `kernel.audit`
//! event category with the principal, tenant, operation, target, outcome, time and correlation
//! id, then queried back.
//!
//! ```sh
//! cargo run --example audit
//! ```

use kernel_bootstrap::layers::Intercept;
use kernel_bootstrap::layers::audit::{self, Audit, AuditQuery};
use kernel_bootstrap::layers::tenant::Tenant;
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{PutOptions, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kernel = Kernel::boot(KernelConfig::from_env()?).await?;
    // The tenant scope first, the audit outermost: records name the caller's own namespaces.
    let audit = Audit::new(kernel.events().clone())
        .principal("billing-service")
        .tenant("acme");
    let stores = kernel
        .stores()
        .layer(&Tenant::new("acme")?)
        .layer(&Intercept::new(audit));

    audit::with_correlation("request-7f3a", async {
        let invoice = json!({"customer": "c-1", "total": 120});
        stores
            .storage
            .put(
                "invoices",
                "2026-001",
                invoice,
                PutOptions::new().if_absent(),
            )
            .await?;
        // A second create of the same key fails; the trail records that too.
        let again = stores
            .storage
            .put(
                "invoices",
                "2026-001",
                json!({}),
                PutOptions::new().if_absent(),
            )
            .await;
        println!(
            "second create: {}",
            again
                .map(|_| "ok".to_owned())
                .unwrap_or_else(|e| e.to_string())
        );
        Ok::<_, kernel_core::Error>(())
    })
    .await?;

    for r in audit::query(&**kernel.events(), &AuditQuery::new().tenant("acme")).await? {
        println!(
            "{} {}/{} -> {} (principal {}, correlation {})",
            r.operation,
            r.namespace.unwrap_or_default(),
            r.key.unwrap_or_default(),
            r.outcome,
            r.principal.unwrap_or_default(),
            r.correlation_id.unwrap_or_default(),
        );
    }
    kernel.shutdown().await;
    Ok(())
}
