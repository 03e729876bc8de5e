-- Takes a lease if nobody holds one: SET NX PX with a random token, then a fencing token from
-- a counter that is never deleted, so it keeps increasing across releases and expiries.
-- KEYS: holder, fence
-- ARGV: token, ttl in milliseconds
-- Returns false when held, else {fencing token, now_us}.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
local fence = redis.call('INCR', KEYS[2])
return { fence, fmt(now_us()) }
