-- Reads a range of one stream's events by version, oldest first (the caller reverses a
-- backward read).
-- KEYS: stream positions, log
-- ARGV: direction ('f' | 'b'), from version ('' default), limit ('' none)
-- Returns the encoded events.
local len = redis.call('LLEN', KEYS[1])
local first, last
if ARGV[1] == 'f' then
  local from = 1
  if ARGV[2] ~= '' then
    from = math.max(tonumber(ARGV[2]), 1)
  end
  first, last = from - 1, len - 1
  if ARGV[3] ~= '' then
    last = math.min(last, first + tonumber(ARGV[3]) - 1)
  end
else
  local from = len
  if ARGV[2] ~= '' then
    from = math.min(tonumber(ARGV[2]), len)
  end
  first, last = 0, from - 1
  if ARGV[3] ~= '' then
    first = math.max(0, last - tonumber(ARGV[3]) + 1)
  end
end
if last < first or last < 0 then
  return {}
end
local out = {}
local chunk = 500
local at = first
while at <= last do
  local upto = math.min(last, at + chunk - 1)
  local positions = redis.call('LRANGE', KEYS[1], at, upto)
  if #positions == 0 then
    break
  end
  local bodies = redis.call('HMGET', KEYS[2], unpack(positions))
  for i = 1, #positions do
    if not bodies[i] then
      error({ err = 'KERNEL_CORRUPTED event at position ' .. positions[i] .. ' is missing from ' .. KEYS[2] })
    end
    out[#out + 1] = bodies[i]
  end
  at = upto + 1
end
return out
