-- Drops a namespace; a non-empty one only when recursive. The rev counter stays, so stamps of
-- a later namespace of the same name never repeat.
-- KEYS: meta, data, idx, ttl, rev
-- ARGV: recursive ('1' | '0')
-- Returns {'ok'}, {'absent'} or {'nonempty', live count}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { 'absent' }
end
local live = live_count(KEYS[3], KEYS[4], now_us())
if live > 0 and ARGV[1] ~= '1' then
  return { 'nonempty', live }
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('INCR', KEYS[5])
return { 'ok' }
