-- Puts one or more entries of a namespace atomically (a single put is a batch of one).
-- KEYS: meta, data, idx, ttl, rev
-- ARGV: n, then per item 7 values:
--   key, condition ('a' always | 'n' if absent | 'v' if version), version, ttl_us ('' none),
--   has_meta ('1' replace | '0' keep), metadata JSON, value JSON
-- Returns {'ok', now, then per item: version, created, expires ('' none), metadata JSON}
--      or {'exists', item} or {'conflict', item, current version or false}.
local now = now_us()
purge(KEYS[2], KEYS[3], KEYS[4], now, 100)
local n = tonumber(ARGV[1])
if n == 0 then
  -- Only write_once sends an empty batch; like the plain put_many it creates nothing.
  return { 'ok', fmt(now) }
end
local current = {}
for i = 1, n do
  local b = 1 + (i - 1) * 7
  local e = load_live(KEYS[2], ARGV[b + 1], now)
  local cond = ARGV[b + 2]
  if cond == 'n' and e then
    return { 'exists', i }
  end
  if cond == 'v' and (not e or e.ver ~= ARGV[b + 3]) then
    return { 'conflict', i, e and e.ver or false }
  end
  current[i] = e or false
end
if redis.call('EXISTS', KEYS[1]) == 0 then
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
  redis.call('ZADD', KEYS[3], 0, key)
  if ex ~= '' then
    redis.call('ZADD', KEYS[4], ex, key)
  else
    redis.call('ZREM', KEYS[4], key)
  end
  out[#out + 1] = ver
  out[#out + 1] = created
  out[#out + 1] = ex
  out[#out + 1] = meta
end
return out
