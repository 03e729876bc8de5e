-- Runs the script above (wrapped as `apply`) at most once per operation id: the record lookup,
-- the write and the record are one script, so concurrent calls with one id apply it once.
-- KEYS: the wrapped script's keys, then the record key (in the namespace's hash tag)
-- ARGV: the wrapped script's arguments, then: how many of them the record keeps (the request
--       parts the outcome is rebuilt from), fingerprint, outcome kind, window in ms
-- Returns {'replay', record} when the id is recorded (nothing written), else the wrapped
-- script's reply; an 'ok' reply is recorded first as
--   netstrings (LEN:BYTES): 'v1', fingerprint, kind, kept count, kept arguments..., reply...
-- so the driver decodes a replayed reply with the same code as a fresh one.
local record = KEYS[#KEYS]
local window = ARGV[#ARGV]
local kind = ARGV[#ARGV - 1]
local fingerprint = ARGV[#ARGV - 2]
local kept = tonumber(ARGV[#ARGV - 3])
local found = redis.call('GET', record)
if found then
  return { 'replay', found }
end
local out = apply()
if out[1] ~= 'ok' then
  -- A failed write records nothing: the id stays free.
  return out
end
local parts = {}
-- Never raises: the write above is already applied, and Redis does not roll a script back.
local function field(v)
  if type(v) == 'number' then
    v = fmt(v)
  else
    v = tostring(v)
  end
  parts[#parts + 1] = #v .. ':' .. v
end
field('v1')
field(fingerprint)
field(kind)
field(kept)
for i = 1, kept do
  field(ARGV[i])
end
for i = 1, #out do
  field(out[i])
end
redis.call('SET', record, table.concat(parts), 'PX', window)
return out
