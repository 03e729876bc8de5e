-- 0010: declared field indexes (StorageDriver::create_index). See docs/postgres.md, "Field
-- indexes".
--
-- The indexes themselves are partial expression indexes on kernel_documents, one per declared
-- (namespace, field), built by the driver with CREATE INDEX CONCURRENTLY (which cannot run in
-- a migration's transaction). This table records which exist, so every process using the
-- database knows which paths its queries may write literally for the planner to match.
CREATE TABLE kernel_field_indexes (
    namespace   text COLLATE "C" NOT NULL,
    field       text COLLATE "C" NOT NULL,
    index_name  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- As in 0007: the tenant of the namespace, so a tenant role sees only its own indexes.
    tenant      text COLLATE "C" GENERATED ALWAYS AS (kernel_tenant_of(namespace)) STORED,
    PRIMARY KEY (namespace, field)
);

-- Row-level security is on from the start: the owner (who declares indexes) is exempt, a
-- tenant role reads its tenant's rows only. Not in kernel_tenant_tables(): a tenant role only
-- reads this table (queries choose their SQL by it), it never writes it.
CREATE POLICY kernel_tenant ON kernel_field_indexes
    USING (tenant = current_setting('kernel.tenant', true));
ALTER TABLE kernel_field_indexes ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_tenant_app') THEN
        GRANT SELECT ON kernel_field_indexes TO kernel_tenant_app;
    END IF;
END
$$;
