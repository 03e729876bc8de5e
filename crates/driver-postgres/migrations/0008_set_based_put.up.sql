-- 0008: set-based document writes. See docs/postgres.md, "Documents".
--
-- 0001's kernel_put ran four statements per row (namespace insert, two row locks, an update or
-- insert) in a PL/pgSQL loop: a batch of 1,000 cost ~4,000 statements and a lock record per
-- row before its update. It is replaced (same signature, same result, same errors) by one
-- statement for the whole batch:
--
-- * Always and IfAbsent rows: one INSERT .. ON CONFLICT DO UPDATE, in key order (two batches
--   over the same keys lock them in the same order and cannot deadlock). The conflict arm
--   works on the locked, newest version of the row, so a concurrent writer of the same key is
--   waited for and then seen: IfAbsent is its WHERE (skip a live row), an expired row counts
--   as absent (version restarts at 1, created_at and the metadata start afresh).
-- * IfVersion rows: one UPDATE .. WHERE version = expected; READ COMMITTED re-checks the
--   condition on the newest version of a row changed concurrently. An absent key is never
--   inserted.
-- * A row whose condition failed is not written: the statement then calls kernel_put_refused
--   for the first such key in input order, which raises KR001 / KR002 as 0001 did. The raise
--   aborts the whole statement: the batch writes nothing.
--
-- The conflict arm of an upsert sees only the table's columns (EXCLUDED), not the input row,
-- so the two per-row choices it needs (keep the stored metadata when none is given; IfAbsent)
-- travel as flags: the flags of the first row for every row, and a JSONB object key -> flags
-- for the rows that differ (binary search per lookup; empty for a uniform batch).
--
-- The driver sends a single put as its own plain statement (crates/driver-postgres/src/
-- storage.rs, PUT_ONE and CAS_ONE) with the same semantics; batches, operation ids and SQL
-- clients use this function.

-- Raises the error of a put whose condition failed for p_key: KR001 (p_cond 1, if absent) or
-- KR002 with the current live version in HINT (p_cond 2, if version). Never returns (its
-- result type only lets kernel_put call it where a version goes). Reads the row with a fresh
-- snapshot, so a concurrent write that made the condition fail is seen.
CREATE FUNCTION kernel_put_refused(p_ns text, p_key text, p_cond smallint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_cur bigint;
BEGIN
    SELECT d.version INTO v_cur FROM kernel_documents d
        WHERE d.namespace = p_ns AND d.key = p_key
          AND (d.expires_at IS NULL OR d.expires_at > clock_timestamp());
    IF p_cond = 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR001', MESSAGE = 'key already exists',
            DETAIL = p_key, HINT = coalesce(v_cur::text, '');
    ELSIF p_cond = 2 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR002', MESSAGE = 'version mismatch',
            DETAIL = p_key, HINT = coalesce(v_cur::text, '');
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'XX000',
        MESSAGE = format('kernel_put wrote no row for key %s of namespace %s', p_key, p_ns);
END
$$;

-- Writes one batch of documents atomically. Arrays are parallel; p_metadata[i] NULL keeps the
-- current metadata, p_ttl_us[i] NULL means no expiry, p_cond[i] is 0 (always), 1 (only if
-- absent) or 2 (only if the live version is p_cond_version[i]). Keys must be distinct (the
-- driver checks; a repeated key fails with PostgreSQL's 21000). Returns one row per key, in
-- input order.
CREATE OR REPLACE FUNCTION kernel_put(
    p_ns text, p_keys text[], p_values jsonb[], p_metadata jsonb[], p_ttl_us bigint[],
    p_cond smallint[], p_cond_version bigint[])
RETURNS TABLE (o_key text, o_metadata jsonb, o_version bigint, o_created_at timestamptz,
               o_updated_at timestamptz, o_expires_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_n bigint := coalesce(cardinality(p_keys), 0);
    -- Flags per row: 1 keep the stored metadata (none given), 2 only if absent.
    v_default int := CASE WHEN p_metadata[1] IS NULL THEN 1 ELSE 0 END
                     + CASE WHEN p_cond[1] = 1 THEN 2 ELSE 0 END;
    v_other jsonb;
BEGIN
    SELECT coalesce(jsonb_object_agg(u.key, u.flags) FILTER (WHERE u.flags <> v_default),
                    '{}'::jsonb)
        INTO v_other
        FROM (SELECT t.key, CASE WHEN t.metadata IS NULL THEN 1 ELSE 0 END
                            + CASE WHEN t.cond = 1 THEN 2 ELSE 0 END AS flags
              FROM unnest(p_keys, p_metadata, p_cond) AS t(key, metadata, cond)) u;
    RETURN QUERY
    WITH i AS (
        SELECT t.key, t.value, t.metadata, t.ttl_us, coalesce(t.cond, 0) AS cond,
               t.cond_version, t.ord
        FROM unnest(p_keys, p_values, p_metadata, p_ttl_us, p_cond, p_cond_version)
             WITH ORDINALITY AS t(key, value, metadata, ttl_us, cond, cond_version, ord)
    ),
    ns AS (
        INSERT INTO kernel_namespaces (name) VALUES (p_ns) ON CONFLICT DO NOTHING
    ),
    up AS (
        INSERT INTO kernel_documents AS d
            (namespace, key, value, metadata, version, created_at, updated_at, expires_at)
        SELECT p_ns, i.key, i.value, coalesce(i.metadata, '{}'::jsonb), 1, v_now, v_now,
               v_now + i.ttl_us * interval '1 microsecond'
        FROM i WHERE i.cond <> 2
        ORDER BY i.key COLLATE "C"
        ON CONFLICT (namespace, key) DO UPDATE SET
            value = EXCLUDED.value,
            metadata = CASE WHEN (d.expires_at IS NULL OR d.expires_at > v_now)
                                 AND (coalesce((v_other ->> EXCLUDED.key)::int, v_default) & 1) = 1
                            THEN d.metadata ELSE EXCLUDED.metadata END,
            version = CASE WHEN d.expires_at IS NULL OR d.expires_at > v_now
                           THEN d.version + 1 ELSE 1 END,
            created_at = CASE WHEN d.expires_at IS NULL OR d.expires_at > v_now
                              THEN d.created_at ELSE EXCLUDED.created_at END,
            updated_at = EXCLUDED.updated_at,
            expires_at = EXCLUDED.expires_at
        WHERE NOT ((coalesce((v_other ->> EXCLUDED.key)::int, v_default) & 2) = 2
                   AND (d.expires_at IS NULL OR d.expires_at > v_now))
        RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at
    ),
    cas AS (
        UPDATE kernel_documents AS d SET
            value = i.value,
            metadata = coalesce(i.metadata, d.metadata),
            version = d.version + 1,
            updated_at = v_now,
            expires_at = v_now + i.ttl_us * interval '1 microsecond'
        FROM i
        WHERE i.cond = 2 AND d.namespace = p_ns AND d.key = i.key
          AND d.version = i.cond_version
          AND (d.expires_at IS NULL OR d.expires_at > v_now)
        RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at
    ),
    w AS (
        SELECT * FROM up UNION ALL SELECT * FROM cas
    )
    -- A key without a written row raises. Volatile output expressions are evaluated after
    -- the sort, so the first refused key in input order is the one named.
    SELECT i.key, w.metadata,
           CASE WHEN w.key IS NULL THEN kernel_put_refused(p_ns, i.key, i.cond::smallint)
                ELSE w.version END,
           w.created_at, w.updated_at, w.expires_at
    FROM i LEFT JOIN w ON w.key = i.key
    ORDER BY i.ord;
END
$$;
