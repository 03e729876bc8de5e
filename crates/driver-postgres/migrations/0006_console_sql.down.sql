-- Reverts 0006_console_sql: console INSERTs are unchecked again, UPDATE and DELETE allowed,
-- the read functions and the view gone. The role kernel_maintenance stays: roles belong to the
-- cluster, and other databases may use it (only this database's grants to it are revoked).
DROP FUNCTION kernel_read_all(bigint, int, text);
DROP FUNCTION kernel_read_stream(text, bigint, int);
DROP VIEW kernel_events_view;

DROP TRIGGER kernel_event_log_append_only ON kernel_event_log;
DROP TRIGGER kernel_events_append_only ON kernel_events;
DROP FUNCTION kernel_append_only();
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_maintenance') THEN
        REVOKE ALL ON kernel_events, kernel_event_log FROM kernel_maintenance;
    END IF;
END
$$;

DROP TRIGGER kernel_events_checked_insert ON kernel_events;
DROP FUNCTION kernel_events_checked_insert();

ALTER FUNCTION kernel_append_batch(text[], smallint[], bigint[], int[], uuid[], text[], jsonb[],
    jsonb[], text[], text[], boolean) RESET kernel.appending;
ALTER FUNCTION kernel_append_batch(text[], smallint[], bigint[], int[], uuid[], text[], jsonb[],
    jsonb[], text[], text[], timestamptz[], boolean) RESET kernel.appending;
