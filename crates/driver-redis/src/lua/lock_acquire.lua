-- Takes a lease if nobody holds one: the holder key keeps "token:fence" with a PX expiry, the
-- fence from a counter that is never deleted, so it keeps increasing across releases and
-- expiries. A key without a counter (never taken, or lost with the data: an empty restart,
-- FLUSHALL) starts from the clock, kernel_core::lock::fencing_seed: (ms since 2020) * 1024, so
-- tokens keep increasing across such a loss. Release and extend compare both parts: a lease with
-- a changed fencing token is forged, not the holder's.
-- KEYS: holder, fence
-- ARGV: token, ttl in milliseconds
-- Returns false when held, else {fencing token, now_us}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local now = now_us()
-- INCR answers 1 only for a missing counter (a stored one is at least its seed + 1), so the
-- counter is seeded only then, without an EXISTS on every acquire.
local fence = redis.call('INCR', KEYS[2])
if fence == 1 then
  local ms = math.floor(now / 1000)
  fence = math.max(0, ms - 1577836800000) * 1024 + 1
  redis.call('SET', KEYS[2], fmt(fence))
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fmt(fence), 'PX', ARGV[2])
return { fence, fmt(now) }
