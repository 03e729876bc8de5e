-- Extends a lease only for its holder (compare and expire).
-- KEYS: holder
-- ARGV: "token:fence" of the lease, ttl in milliseconds
-- Returns now_us when extended, false when the lease is not the current live holder's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return fmt(now_us())
end
return false
