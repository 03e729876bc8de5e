-- Saves a snapshot at a version of the stream, keeping the highest version saved.
-- KEYS: stream positions, snapshot
-- ARGV: version, state JSON
-- A snapshot is stored as VERSION:CREATED_US:<state JSON>.
-- Returns {'ok'} or {'range', current version}.
local current = redis.call('LLEN', KEYS[1])
local version = tonumber(ARGV[1])
if version < 1 or version > current then
  return { 'range', current }
end
local old = redis.call('GET', KEYS[2])
if old then
  local old_version = string.match(old, '^(%d+):')
  if old_version and tonumber(old_version) > version then
    return { 'ok' }
  end
end
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. fmt(now_us()) .. ':' .. ARGV[2])
return { 'ok' }
