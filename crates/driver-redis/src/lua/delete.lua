-- Deletes one or more entries of a namespace atomically.
-- KEYS: meta, data, idx, ttl, rev
-- ARGV: n, then per item 3 values: key, condition ('a' always | 'v' if version), version
-- Returns {'ok', removed live count, then per item 1 or 0}
--      or {'conflict', item, current version or false}.
local now = now_us()
purge(KEYS[2], KEYS[3], KEYS[4], now, 100)
local n = tonumber(ARGV[1])
local live = {}
for i = 1, n do
  local b = 1 + (i - 1) * 3
  local e = load_live(KEYS[2], ARGV[b + 1], now)
  if ARGV[b + 2] == 'v' and (not e or e.ver ~= ARGV[b + 3]) then
    return { 'conflict', i, e and e.ver or false }
  end
  live[i] = e and 1 or 0
end
local removed = 0
local out = { 'ok', 0 }
for i = 1, n do
  local key = ARGV[1 + (i - 1) * 3 + 1]
  -- Also drops an expired entry the purge budget did not reach: it is gone either way.
  if redis.call('HDEL', KEYS[2], key) == 1 then
    redis.call('ZREM', KEYS[3], key)
    redis.call('ZREM', KEYS[4], key)
  end
  removed = removed + live[i]
  out[#out + 1] = live[i]
end
if removed > 0 then
  redis.call('INCR', KEYS[5])
end
out[2] = removed
return out
