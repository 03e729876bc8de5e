-- Takes a lease if nobody holds one: the holder key keeps "token:fence" with a PX expiry, the
-- fence from a counter that is never deleted, so it keeps increasing across releases and
-- expiries. Release and extend compare both parts: a lease with a changed fencing token is
-- forged, not the holder's.
-- KEYS: holder, fence
-- ARGV: token, ttl in milliseconds
-- Returns false when held, else {fencing token, now_us}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return { fence, fmt(now_us()) }
