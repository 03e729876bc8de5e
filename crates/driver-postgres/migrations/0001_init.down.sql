-- Reverts 0001_init: drops every kernel table and function (and so all kernel data).
DROP FUNCTION IF EXISTS kernel_rate_check(text, bigint, bigint, bigint, bigint);
DROP TABLE IF EXISTS kernel_rate_limits;
DROP TABLE IF EXISTS kernel_locks;
DROP FUNCTION IF EXISTS kernel_append(text, bigint, jsonb);
DROP FUNCTION IF EXISTS kernel_event_positions(text, uuid[]);
DROP FUNCTION IF EXISTS kernel_sequence();
DROP FUNCTION IF EXISTS kernel_append_stage(text, smallint, bigint, uuid[], text[], jsonb[], jsonb[], text[], text[]);
DROP TABLE IF EXISTS kernel_snapshots;
DROP TABLE IF EXISTS kernel_event_pending;
DROP TABLE IF EXISTS kernel_event_log;
DROP TABLE IF EXISTS kernel_events;
DROP FUNCTION IF EXISTS kernel_drop_namespace(text, boolean);
DROP FUNCTION IF EXISTS kernel_tx_commit(text[], text[], bigint[], smallint[], jsonb[], jsonb[], bigint[], bigint[]);
DROP FUNCTION IF EXISTS kernel_delete(text, text[], bigint[]);
DROP FUNCTION IF EXISTS kernel_put(text, text[], jsonb[], jsonb[], bigint[], smallint[], bigint[]);
DROP TABLE IF EXISTS kernel_documents;
DROP TABLE IF EXISTS kernel_namespaces;
