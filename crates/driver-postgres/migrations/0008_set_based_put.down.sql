-- Reverts 0008_set_based_put: kernel_put goes back to 0001's row-by-row body (same signature,
-- same results), and the helper that raised for it goes.
CREATE OR REPLACE FUNCTION kernel_put(
    p_ns text, p_keys text[], p_values jsonb[], p_metadata jsonb[], p_ttl_us bigint[],
    p_cond smallint[], p_cond_version bigint[])
RETURNS TABLE (o_key text, o_metadata jsonb, o_version bigint, o_created_at timestamptz,
               o_updated_at timestamptz, o_expires_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_cur bigint;
    v_found boolean;
    v_live boolean;
    i int;
BEGIN
    INSERT INTO kernel_namespaces (name) VALUES (p_ns) ON CONFLICT DO NOTHING;
    -- Lock the rows that exist in key order, so two batches over the same keys cannot deadlock.
    PERFORM 1 FROM kernel_documents d
        WHERE d.namespace = p_ns AND d.key = ANY (p_keys) ORDER BY d.key FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        LOOP
            SELECT d.version, (d.expires_at IS NULL OR d.expires_at > v_now)
                INTO v_cur, v_live
                FROM kernel_documents d
                WHERE d.namespace = p_ns AND d.key = p_keys[i] FOR UPDATE;
            v_found := FOUND;
            IF NOT v_found OR NOT v_live THEN
                v_cur := NULL;
            END IF;
            IF p_cond[i] = 1 AND v_cur IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'KR001', MESSAGE = 'key already exists',
                    DETAIL = p_keys[i], HINT = v_cur::text;
            ELSIF p_cond[i] = 2 AND v_cur IS DISTINCT FROM p_cond_version[i] THEN
                RAISE EXCEPTION USING ERRCODE = 'KR002', MESSAGE = 'version mismatch',
                    DETAIL = p_keys[i], HINT = coalesce(v_cur::text, '');
            END IF;
            IF v_found THEN
                UPDATE kernel_documents d SET
                    value = p_values[i],
                    metadata = coalesce(p_metadata[i],
                                        CASE WHEN v_cur IS NULL THEN '{}'::jsonb ELSE d.metadata END),
                    version = coalesce(v_cur, 0) + 1,
                    created_at = CASE WHEN v_cur IS NULL THEN v_now ELSE d.created_at END,
                    updated_at = v_now,
                    expires_at = v_now + p_ttl_us[i] * interval '1 microsecond'
                WHERE d.namespace = p_ns AND d.key = p_keys[i]
                RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at
                INTO o_key, o_metadata, o_version, o_created_at, o_updated_at, o_expires_at;
                RETURN NEXT;
                EXIT;
            END IF;
            INSERT INTO kernel_documents AS d
                (namespace, key, value, metadata, version, created_at, updated_at, expires_at)
            VALUES (p_ns, p_keys[i], p_values[i], coalesce(p_metadata[i], '{}'::jsonb), 1,
                    v_now, v_now, v_now + p_ttl_us[i] * interval '1 microsecond')
            ON CONFLICT DO NOTHING
            RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at
            INTO o_key, o_metadata, o_version, o_created_at, o_updated_at, o_expires_at;
            IF FOUND THEN
                RETURN NEXT;
                EXIT;
            END IF;
            -- A concurrent writer created the key after our read: read it again (a new
            -- statement sees its commit) and decide anew.
        END LOOP;
    END LOOP;
END
$$;
DROP FUNCTION kernel_put_refused(text, text, smallint);
