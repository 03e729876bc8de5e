-- Replaces the metadata of a live entry (a write: version + 1; value, TTL and created stay).
-- KEYS: meta, data, idx, ttl, rev
-- ARGV: key, expected stamp ('' any), metadata JSON
-- Returns {'ok', encoded entry}, {'absent'} or {'moved'} (the stamp changed: merge again).
local now = now_us()
local e = load_live(KEYS[2], ARGV[1], now)
if not e then
  return { 'absent' }
end
if ARGV[2] ~= '' and e.rev ~= ARGV[2] then
  return { 'moved' }
end
local rev = fmt(redis.call('INCR', KEYS[5]))
local raw = encode(fmt(tonumber(e.ver) + 1), e.cr, fmt(now), e.ex, rev, ARGV[3], value_of(e))
redis.call('HSET', KEYS[2], ARGV[1], raw)
return { 'ok', raw }
