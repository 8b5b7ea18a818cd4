-- Releases each lock KEYS[i] that its owner ARGV[i] still holds; returns how many it
-- released. One call for many locks: an acknowledgement releases its batch's together,
-- read with one MGET and deleted with one DEL per 500 (a `redis.call` costs about as much
-- as the GET it makes, so one per lock would double the release's cost).
local released = 0
for from = 1, #KEYS, 500 do
  local last = math.min(from + 499, #KEYS)
  local held = redis.call('MGET', unpack(KEYS, from, last))
  local mine = {}
  for i = from, last do
    if held[i - from + 1] == ARGV[i] then mine[#mine + 1] = KEYS[i] end
  end
  if #mine > 0 then released = released + redis.call('DEL', unpack(mine)) end
end
return released
