-- Reverts 0010_field_indexes: the declared indexes go with the table that records them.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT index_name FROM kernel_field_indexes LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', r.index_name);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_tenant_app') THEN
        REVOKE ALL ON kernel_field_indexes FROM kernel_tenant_app;
    END IF;
END
$$;
DROP TABLE kernel_field_indexes;
