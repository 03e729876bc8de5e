-- The server clock and number formatting, prepended to every script that reads the time or
-- writes numbers (all but the lock release). Kept apart from common.lua so the lock and
-- rate-limit scripts do not define, on every call, document helpers they never use.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function fmt(n)
  return string.format('%.0f', n)
end
