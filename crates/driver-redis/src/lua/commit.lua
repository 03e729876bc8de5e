-- Commits a transaction: checks that every entry it read or wrote still carries the stamp (REV)
-- it saw, then applies the staged writes. All or nothing, in one script.
-- KEYS: 5 per namespace: meta, data, idx, ttl, rev
-- ARGV: checks, then per check 3 values: namespace index (1-based), key, stamp ('' absent);
--       then ops, then per op 8 values: namespace index, key, kind ('p' put | 'd' delete),
--       version, created ('keep' | 'new'), ttl_us ('' none), metadata JSON, value JSON
-- Returns {'ok', now} or {'conflict', namespace index, key}.
local now = now_us()
local function k(ns, i)
  return KEYS[(tonumber(ns) - 1) * 5 + i]
end
local checks = tonumber(ARGV[1])
local a = 2
for _ = 1, checks do
  local e = load_live(k(ARGV[a], 2), ARGV[a + 1], now)
  local seen = ARGV[a + 2]
  if (seen == '' and e) or (seen ~= '' and (not e or e.rev ~= seen)) then
    return { 'conflict', tonumber(ARGV[a]), ARGV[a + 1] }
  end
  a = a + 3
end
local ops = tonumber(ARGV[a])
a = a + 1
local stamp = fmt(now)
local revs = {}
for _ = 1, ops do
  local ns, key = ARGV[a], ARGV[a + 1]
  if not revs[ns] then
    purge(k(ns, 2), k(ns, 3), k(ns, 4), now, 100)
    revs[ns] = fmt(redis.call('INCR', k(ns, 5)))
  end
  if ARGV[a + 2] == 'd' then
    if redis.call('HDEL', k(ns, 2), key) == 1 then
      redis.call('ZREM', k(ns, 3), key)
      redis.call('ZREM', k(ns, 4), key)
    end
  else
    if redis.call('EXISTS', k(ns, 1)) == 0 then
      redis.call('HSET', k(ns, 1), 'created', stamp, 'meta', '{}')
    end
    local created = stamp
    if ARGV[a + 4] == 'keep' then
      local e = load_live(k(ns, 2), key, now)
      if e then
        created = e.cr
      end
    end
    local ex = ''
    if ARGV[a + 5] ~= '' then
      ex = fmt(now + tonumber(ARGV[a + 5]))
    end
    redis.call('HSET', k(ns, 2), key, encode(ARGV[a + 3], created, stamp, ex, revs[ns], ARGV[a + 6], ARGV[a + 7]))
    redis.call('ZADD', k(ns, 3), 0, key)
    if ex ~= '' then
      redis.call('ZADD', k(ns, 4), ex, key)
    else
      redis.call('ZREM', k(ns, 4), key)
    end
  end
  a = a + 8
end
return { 'ok', stamp }
