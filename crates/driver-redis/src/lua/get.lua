-- Reads entries; expired ones read as absent whether or not they have been purged.
-- KEYS: data
-- ARGV: keys
-- Returns one encoded entry or false per key, in order.
local now = now_us()
local out = {}
for i = 1, #ARGV do
  local e = load_live(KEYS[1], ARGV[i], now)
  out[i] = e and e.raw or false
end
return out
