-- 0007: row-level security per tenant. See docs/postgres.md, "Row-level security".
--
-- 1. Every table holding data of a caller gets a column `tenant`, generated from the row's name:
--    the kernel's tenant layer stores a tenant's data under names starting `t_<id>.`, so the
--    tenant of a namespace, stream, lock key or rate-limit key is that <id> (NULL outside any
--    tenant). Generated, so no writer can put a row under a name of one tenant and the column
--    of another.
-- 2. A policy per table lets a role subject to row-level security see and write only the rows
--    whose tenant is current_setting('kernel.tenant'): the driver sets it for every call of a
--    tenant-scoped store when its `tenancy` is `rls`; a console session sets it itself. Without
--    the setting nothing is visible. The policies only act once row-level security is enabled:
--    kernel_enable_row_security() (the driver calls it at boot with tenancy = rls when it may
--    migrate). Table owners and superusers are not subject to it (the driver connected as the
--    owner keeps seeing everything; a tenant role does not).
-- 3. The sequencer and the housekeeping must see every tenant's rows: the functions they call
--    run as the tables' owner (SECURITY DEFINER) and hand back positions and counts only.
-- 4. A NOLOGIN role kernel_tenant_app holds the privileges a tenant-scoped application role
--    needs; GRANT kernel_tenant_app TO <your login role>.

CREATE FUNCTION kernel_tenant_of(name text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT substring(name FROM '^t_([A-Za-z0-9_]{1,32})\.')
$$;

-- The tables holding callers' data, and the column naming a row: the one list every step
-- below (columns, policies, the switch, the boot check) and the down migration go by.
CREATE FUNCTION kernel_tenant_tables(OUT table_name text, OUT name_column text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('kernel_namespaces', 'name'), ('kernel_documents', 'namespace'),
           ('kernel_operations', 'namespace'), ('kernel_events', 'stream'),
           ('kernel_snapshots', 'stream'), ('kernel_locks', 'key'),
           ('kernel_rate_limits', 'key')
$$;

-- current_setting(.., true) is NULL when the setting was never made and '' after a
-- transaction that set it locally ended: neither equals any tenant, so both see nothing.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM kernel_tenant_tables() LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN tenant text COLLATE "C" '
                       'GENERATED ALWAYS AS (kernel_tenant_of(%I)) STORED',
                       t.table_name, t.name_column);
        EXECUTE format('CREATE POLICY kernel_tenant ON %I '
                       'USING (tenant = current_setting(''kernel.tenant'', true)) '
                       'WITH CHECK (tenant = current_setting(''kernel.tenant'', true))',
                       t.table_name);
    END LOOP;
END
$$;

-- A view reads with its owner's rights, which would show a tenant role every tenant's events
-- through 0006's kernel_events_view: from PostgreSQL 15 on it reads with the caller's
-- (security_invoker), before that tenant roles are not given it (see the grants below). Its
-- tenant is kernel_tenant_of(stream).
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW kernel_events_view SET (security_invoker = true);
    END IF;
END
$$;

-- A tenant's events in order of writing, for the reads of a tenant role (its read_all scans
-- only its own rows).
CREATE INDEX kernel_events_tenant_idx ON kernel_events (tenant, seq) WHERE tenant IS NOT NULL;

-- Maintenance (0006) repairs events of any tenant.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_maintenance') THEN
        CREATE POLICY kernel_maintenance ON kernel_events TO kernel_maintenance
            USING (true) WITH CHECK (true);
    END IF;
END
$$;

-- Positions and counts only; they must see every tenant's events.
ALTER FUNCTION kernel_sequence() SECURITY DEFINER;
ALTER FUNCTION kernel_sequence_cursor() SECURITY DEFINER;
ALTER FUNCTION kernel_events_unpositioned(bigint) SECURITY DEFINER;
ALTER FUNCTION kernel_last_append_positions() SECURITY DEFINER;
ALTER FUNCTION kernel_event_positions(bigint[]) SECURITY DEFINER;

-- The housekeeping of the listener with row-level security: expired documents, rate-limit
-- keys and operation records of every tenant, at most p_limit of each (the statements the
-- listener runs itself otherwise). Returns how many rows went.
CREATE FUNCTION kernel_purge_expired(p_limit int DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_total bigint := 0;
    v_n bigint;
BEGIN
    DELETE FROM kernel_documents WHERE ctid IN (SELECT ctid FROM kernel_documents
        WHERE expires_at <= clock_timestamp() LIMIT p_limit);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_total := v_total + v_n;
    DELETE FROM kernel_rate_limits WHERE ctid IN (SELECT ctid FROM kernel_rate_limits
        WHERE tat_us <= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
        LIMIT p_limit);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_total := v_total + v_n;
    -- Rows a write_once is taking over right now are skipped, not waited for.
    DELETE FROM kernel_operations WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM kernel_operations WHERE expires_at <= now()
        ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_total := v_total + v_n;
    RETURN v_total;
END
$$;

-- Row-level security on or off for every table of kernel_tenant_tables(); needs the tables'
-- owner. Idempotent.
CREATE FUNCTION kernel_enable_row_security()
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM kernel_tenant_tables() LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t.table_name);
    END LOOP;
END
$$;

CREATE FUNCTION kernel_disable_row_security()
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM kernel_tenant_tables() LOOP
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', t.table_name);
    END LOOP;
END
$$;

-- Which of the tables have row-level security on: the driver's boot check.
CREATE VIEW kernel_row_security AS
    SELECT c.relname::text AS table_name, c.relrowsecurity AS enabled
    FROM pg_class c
    WHERE c.relkind = 'r' AND c.relnamespace = (SELECT oid FROM pg_namespace
                                                 WHERE nspname = current_schema())
      AND c.relname IN (SELECT table_name FROM kernel_tenant_tables());

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_tenant_app') THEN
        BEGIN
            CREATE ROLE kernel_tenant_app NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role kernel_tenant_app not created (the migrating role lacks '
                    'CREATEROLE): grant the privileges of docs/postgres.md, "Row-level '
                    'security", to your application role yourself';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_tenant_app') THEN
        GRANT USAGE ON SCHEMA public TO kernel_tenant_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON kernel_namespaces, kernel_documents,
            kernel_operations, kernel_snapshots, kernel_locks, kernel_rate_limits
            TO kernel_tenant_app;
        GRANT SELECT, INSERT ON kernel_events TO kernel_tenant_app;
        GRANT SELECT ON kernel_event_log, kernel_row_security TO kernel_tenant_app;
        IF current_setting('server_version_num')::int >= 150000 THEN
            GRANT SELECT ON kernel_events_view TO kernel_tenant_app;
        END IF;
        -- The first driver to connect writes the generation marker (data-loss detection).
        GRANT SELECT, INSERT ON kernel_generation TO kernel_tenant_app;
        -- The driver's boot reads which migrations ran (the table the migrator keeps).
        IF to_regclass('kernel_schema_migrations') IS NOT NULL THEN
            GRANT SELECT ON kernel_schema_migrations TO kernel_tenant_app;
        END IF;
    END IF;
END
$$;
