-- One page of a namespace in byte-wise key order (ZRANGEBYLEX compares with memcmp).
-- KEYS: data, idx, ttl
-- ARGV: direction ('f' | 'r'), min bound, max bound (ZRANGEBYLEX syntax), count
-- Returns {scanned, last scanned key or false, then key, encoded entry for each live entry}.
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
if redis.call('EXISTS', KEYS[3]) == 0 then
  -- No entry of the namespace has an expiry (an entry with one is in ttl until it is purged),
  -- so every stored entry is live: no header to parse here. The driver decodes each entry
  -- anyway and reports an undecodable one as corrupted, naming its key (as below).
  for i = 1, #members do
    if raws[i] then
      out[#out + 1] = members[i]
      out[#out + 1] = raws[i]
    end
  end
  return out
end
local now = now_us()
for i = 1, #members do
  local e = parse(raws[i])
  -- An undecodable entry goes to the driver too, whose decoder reports it naming its key.
  if e == false or (e and is_live(e, now)) then
    out[#out + 1] = members[i]
    out[#out + 1] = raws[i]
  end
end
return out
