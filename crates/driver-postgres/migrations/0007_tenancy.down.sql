-- Reverts 0007_tenancy: row-level security off, policies, tenant columns and functions gone.
-- The role kernel_tenant_app stays (roles belong to the cluster; only this database's grants
-- to it are revoked).
SELECT kernel_disable_row_security();
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_tenant_app') THEN
        REVOKE ALL ON kernel_namespaces, kernel_documents, kernel_operations, kernel_snapshots,
            kernel_locks, kernel_rate_limits, kernel_events, kernel_event_log,
            kernel_generation, kernel_events_view, kernel_row_security FROM kernel_tenant_app;
        IF to_regclass('kernel_schema_migrations') IS NOT NULL THEN
            REVOKE ALL ON kernel_schema_migrations FROM kernel_tenant_app;
        END IF;
    END IF;
END
$$;
DROP VIEW kernel_row_security;
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW kernel_events_view RESET (security_invoker);
    END IF;
END
$$;
DROP FUNCTION kernel_disable_row_security();
DROP FUNCTION kernel_enable_row_security();
DROP FUNCTION kernel_purge_expired(int);
ALTER FUNCTION kernel_sequence() SECURITY INVOKER;
ALTER FUNCTION kernel_sequence_cursor() SECURITY INVOKER;
ALTER FUNCTION kernel_events_unpositioned(bigint) SECURITY INVOKER;
ALTER FUNCTION kernel_last_append_positions() SECURITY INVOKER;
ALTER FUNCTION kernel_event_positions(bigint[]) SECURITY INVOKER;
DROP POLICY IF EXISTS kernel_maintenance ON kernel_events;
DROP INDEX kernel_events_tenant_idx;
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM kernel_tenant_tables() LOOP
        EXECUTE format('DROP POLICY kernel_tenant ON %I', t.table_name);
        EXECUTE format('ALTER TABLE %I DROP COLUMN tenant', t.table_name);
    END LOOP;
END
$$;
DROP FUNCTION kernel_tenant_tables();
DROP FUNCTION kernel_tenant_of(text);
