-- Releases a lease only for its holder (compare and delete).
-- KEYS: holder
-- ARGV: "token:fence" of the lease
-- Returns 1 when released, 0 when the lease is not the current live holder's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
