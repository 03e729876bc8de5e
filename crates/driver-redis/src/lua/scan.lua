-- One page of a namespace in byte-wise key order (ZRANGEBYLEX compares with memcmp).
-- KEYS: data, idx
-- ARGV: direction ('f' | 'r'), min bound, max bound (ZRANGEBYLEX syntax), count
-- Returns {scanned, last scanned key or false, then key, encoded entry for each live entry}.
local now = now_us()
local members
if ARGV[1] == 'f' then
  members = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[2], ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
else
  members = redis.call('ZREVRANGEBYLEX', KEYS[2], ARGV[3], ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
end
local out = { #members, members[#members] or false }
if #members == 0 then
  return out
end
local raws = redis.call('HMGET', KEYS[1], unpack(members))
for i = 1, #members do
  local e = parse(raws[i])
  if e == false then
    error({ err = 'KERNEL_CORRUPTED entry ' .. members[i] .. ' in ' .. KEYS[1] })
  end
  if e and is_live(e, now) then
    out[#out + 1] = members[i]
    out[#out + 1] = raws[i]
  end
end
return out
