-- Removes every entry of a namespace (which stays); returns how many were live.
-- KEYS: meta, data, idx, ttl, rev
local live = live_count(KEYS[3], KEYS[4], now_us())
if redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[4]) > 0 then
  redis.call('INCR', KEYS[5])
end
return live
