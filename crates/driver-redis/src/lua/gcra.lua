-- One GCRA step on the server clock, exactly kernel_core::rate_limit::gcra on microseconds.
-- KEYS: the key's theoretical arrival time (TAT)
-- ARGV: emission interval T (us), burst tolerance tau (us), cost, limit
-- Returns {allowed (1 | 0), remaining, retry_after_us, reset_after_us}.
local now = now_us()
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = math.max(tonumber(stored), now)
end
local new_tat = tat + t * cost
local allow_at = math.max(new_tat - tau, 0)
local function remaining_after(s)
  local used = math.max(s - now, 0)
  local free = math.max(tau - used, 0)
  return math.min(math.floor(free / t), limit)
end
if allow_at <= now then
  if cost > 0 and new_tat > now then
    -- The state lapses when the key is back to its full burst.
    redis.call('SET', KEYS[1], fmt(new_tat), 'PX', fmt(math.ceil((new_tat - now) / 1000)))
  end
  return { 1, remaining_after(new_tat), 0, fmt(new_tat - now) }
end
return { 0, remaining_after(tat), fmt(allow_at - now), fmt(math.max(tat - now, 0)) }
