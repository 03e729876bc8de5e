-- Shared helpers of the document scripts (after clock.lua).
--
-- An entry is stored as one string in the namespace's data hash:
--   VERSION:CREATED:UPDATED:EXPIRES:REV:METALEN:<metadata JSON><value JSON>
-- (times in microseconds of the server clock, EXPIRES empty without TTL, METALEN in bytes), so
-- scripts read the header without ever decoding (and so re-encoding) user JSON.

-- Parses an entry's header; nil for a missing entry, false for an undecodable one.
local function parse(raw)
  if not raw then
    return nil
  end
  local ver, cr, up, ex, rev, ml, pos =
    string.match(raw, '^(%d+):(%d+):(%d+):(%d*):(%d+):(%d+):()')
  if not ver then
    return false
  end
  return { ver = ver, cr = cr, up = up, ex = ex, rev = rev, ml = tonumber(ml), pos = pos, raw = raw }
end

local function is_live(e, now)
  return e.ex == '' or tonumber(e.ex) > now
end

local function meta_of(e)
  return string.sub(e.raw, e.pos, e.pos + e.ml - 1)
end

local function value_of(e)
  return string.sub(e.raw, e.pos + e.ml)
end

local function encode(ver, cr, up, ex, rev, meta, value)
  return ver .. ':' .. cr .. ':' .. up .. ':' .. ex .. ':' .. rev .. ':' .. #meta .. ':' .. meta .. value
end

-- Removes up to `max` expired entries of a namespace. Expired entries are already invisible
-- (every read compares EXPIRES with TIME); this only gives their memory back.
local function purge(data, idx, ttl, now, max)
  local dead = redis.call('ZRANGEBYSCORE', ttl, '-inf', fmt(now), 'LIMIT', 0, max)
  if #dead == 0 then
    return 0
  end
  redis.call('HDEL', data, unpack(dead))
  redis.call('ZREM', idx, unpack(dead))
  redis.call('ZREM', ttl, unpack(dead))
  return #dead
end

-- The live entry at `key` (nil when absent or expired); raises on an undecodable one.
local function load_live(data, key, now)
  local e = parse(redis.call('HGET', data, key))
  if e == false then
    error({ err = 'KERNEL_CORRUPTED entry ' .. key .. ' in ' .. data })
  end
  if e and not is_live(e, now) then
    return nil
  end
  return e
end

-- Number of live entries: indexed keys minus those whose expiry has passed.
local function live_count(idx, ttl, now)
  return redis.call('ZCARD', idx) - redis.call('ZCOUNT', ttl, '-inf', fmt(now))
end
