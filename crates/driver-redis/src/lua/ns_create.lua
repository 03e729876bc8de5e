-- Creates an empty namespace.
-- KEYS: meta
-- ARGV: metadata JSON
-- Returns {'ok', created} or {'exists'}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return { 'exists' }
end
local now = fmt(now_us())
redis.call('HSET', KEYS[1], 'created', now, 'meta', ARGV[1])
return { 'ok', now }
