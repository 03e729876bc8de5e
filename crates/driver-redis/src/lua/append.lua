-- Appends events to a stream under an expected version, assigning global positions. Redis runs
-- scripts one at a time, so positions are gapless and visible in order.
-- KEYS: head, log, stream positions, stream ids, generation marker
-- ARGV: notify channel, expected ('any' | 'none' | 'exists' | 'exact'), expected version, n,
--       then per event 3 values: id, body JSON, given recording time in microseconds ('' for the
--       time of the append), then the generation marker the driver expects
-- A marker that changed or is gone means the data was lost (generation.rs): nothing is written
-- and the error reply is 'KERNEL_DATA_LOSS <marker found or missing>'.
-- An event is stored as POSITION:VERSION:RECORDED_US:<body JSON>.
-- Returns {'ok', recorded_us, version before the append, positions...},
--         {'conflict', current version},
--         or, when an id is already in the stream, {'seen', current version, then per event its
--         stored version and position, or false, false} for the caller's idempotency rule.
local generation = redis.call('GET', KEYS[5])
if generation ~= ARGV[#ARGV] then
  return redis.error_reply('KERNEL_DATA_LOSS ' .. (generation or 'missing'))
end
local n = tonumber(ARGV[4])
local stored = {}
local seen = false
for i = 1, n do
  local v = redis.call('HGET', KEYS[4], ARGV[2 + 3 * i])
  stored[i] = v or false
  if v then
    seen = true
  end
end
local current = redis.call('LLEN', KEYS[3])
if seen then
  local out = { 'seen', current }
  for i = 1, n do
    if stored[i] then
      out[#out + 1] = stored[i]
      out[#out + 1] = redis.call('LINDEX', KEYS[3], tonumber(stored[i]) - 1) or false
    else
      out[#out + 1] = false
      out[#out + 1] = false
    end
  end
  return out
end
local kind = ARGV[2]
local admitted = kind == 'any'
  or (kind == 'none' and current == 0)
  or (kind == 'exists' and current > 0)
  or (kind == 'exact' and tostring(current) == ARGV[3])
if not admitted then
  return { 'conflict', current }
end
local now = fmt(now_us())
local first = redis.call('INCRBY', KEYS[1], n) - n
local out = { 'ok', now, current }
for i = 1, n do
  local pos = first + i
  local ver = current + i
  local recorded = ARGV[4 + 3 * i]
  if recorded == '' then
    recorded = now
  end
  redis.call('HSET', KEYS[2], fmt(pos), fmt(pos) .. ':' .. fmt(ver) .. ':' .. recorded .. ':' .. ARGV[3 + 3 * i])
  redis.call('RPUSH', KEYS[3], fmt(pos))
  redis.call('HSET', KEYS[4], ARGV[2 + 3 * i], fmt(ver))
  out[#out + 1] = pos
end
redis.call('PUBLISH', ARGV[1], fmt(first + n))
return out
