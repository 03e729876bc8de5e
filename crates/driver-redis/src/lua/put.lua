-- Puts one or more entries of a namespace atomically (a single put is a batch of one).
-- KEYS: meta, data, idx, ttl, rev
-- ARGV: n, then per item 7 values:
--   key, condition ('a' always | 'n' if absent | 'v' if version), version, ttl_us ('' none),
--   has_meta ('1' replace | '0' keep), metadata JSON, value JSON,
-- then purge ('1': purge expired entries; else only when this write sets a TTL). The flag comes
-- last so an operation record keeps the first 1 + 7n arguments, as before it existed.
-- Returns {'ok', now, then per item: version, created, expires ('' none), metadata JSON}
--      or {'exists', item} or {'conflict', item, current version or false}.
local now = now_us()
local n = tonumber(ARGV[1])
-- The purge runs when the driver asks (one write in PURGE_EVERY, see storage.rs) or when this
-- write adds expiries, so most writes to a namespace without TTLs skip the ZRANGEBYSCORE.
local purging = ARGV[n * 7 + 2] == '1'
if n == 0 then
  -- Only write_once sends an empty batch; like the plain put_many it creates nothing.
  return { 'ok', fmt(now) }
end
local current = {}
-- What was stored at each key before this script, which decides the index writes:
--   'none'  no entry: the key is in neither idx nor ttl;
--   'plain' an entry without expiry: already in idx, not in ttl (the purge never touches it);
--   'any'   an entry with an expiry (the purge below may remove it) or a key met twice in the
--           batch: both index sets are written as if nothing were known.
-- A stored entry also means the namespace record exists (every write creates it, a drop removes
-- the entry with it), so only a batch with a 'none' key checks for it.
local before = {}
local seen = {}
local fresh = false
for i = 1, n do
  local b = 1 + (i - 1) * 7
  local key = ARGV[b + 1]
  local e = parse(redis.call('HGET', KEYS[2], key))
  if e == false then
    error({ err = 'KERNEL_CORRUPTED entry ' .. key .. ' in ' .. KEYS[2] })
  end
  if seen[key] then
    before[i] = 'any'
  elseif not e then
    before[i] = 'none'
    fresh = true
  elseif e.ex == '' then
    before[i] = 'plain'
  else
    before[i] = 'any'
  end
  seen[key] = true
  if e and not is_live(e, now) then
    e = nil
  end
  local cond = ARGV[b + 2]
  if cond == 'n' and e then
    return { 'exists', i }
  end
  if cond == 'v' and (not e or e.ver ~= ARGV[b + 3]) then
    return { 'conflict', i, e and e.ver or false }
  end
  current[i] = e or false
  if ARGV[b + 4] ~= '' then
    purging = true
  end
end
if purging then
  purge(KEYS[2], KEYS[3], KEYS[4], now, 100)
end
if fresh and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'created', fmt(now), 'meta', '{}')
end
local rev = fmt(redis.call('INCR', KEYS[5]))
local stamp = fmt(now)
local out = { 'ok', stamp }
for i = 1, n do
  local b = 1 + (i - 1) * 7
  local key = ARGV[b + 1]
  local e = current[i]
  local ver, created, meta = '1', stamp, '{}'
  if e then
    ver = fmt(tonumber(e.ver) + 1)
    created = e.cr
    meta = meta_of(e)
  end
  if ARGV[b + 5] == '1' then
    meta = ARGV[b + 6]
  end
  local ex = ''
  if ARGV[b + 4] ~= '' then
    ex = fmt(now + tonumber(ARGV[b + 4]))
  end
  redis.call('HSET', KEYS[2], key, encode(ver, created, stamp, ex, rev, meta, ARGV[b + 7]))
  if before[i] ~= 'plain' then
    redis.call('ZADD', KEYS[3], 0, key)
  end
  if ex ~= '' then
    redis.call('ZADD', KEYS[4], ex, key)
  elseif before[i] == 'any' then
    redis.call('ZREM', KEYS[4], key)
  end
  out[#out + 1] = ver
  out[#out + 1] = created
  out[#out + 1] = ex
  out[#out + 1] = meta
end
return out
