DROP FUNCTION kernel_append_batch(text[], smallint[], bigint[], int[], uuid[], text[], jsonb[],
    jsonb[], text[], text[], timestamptz[], boolean);
