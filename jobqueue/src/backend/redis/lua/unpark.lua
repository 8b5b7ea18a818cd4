-- Brings back jobs set aside under keys due by ARGV[2] (now) in the namespace ARGV[1], as
-- many as each key's limit has room for; looks at up to ARGV[3] keys. A key still without
-- room is looked at again when it may have some; a concurrency key with jobs left, after a
-- lease (ARGV[4] seconds), in case no release comes. With keys ARGV[5..] (keys whose slots
-- an acknowledgement freed), brings back one job set aside under each of them instead.
-- Returns how many jobs came back. KEYS[1] is the index of limit keys (named, so that a
-- cluster sends the call to the node holding the namespace).
local ns, now, max, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local index = KEYS[1]
local moved = 0
if #ARGV > 4 then
  for i = 5, #ARGV do moved = moved + unpark(ns, ARGV[i], 1) end
  return moved
end
for _, key in ipairs(redis.call('ZRANGE', index, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)) do
  local oldest = redis.call('LINDEX', parked_key(ns, key), -1)
  local found
  if oldest then
    local _, text = header(oldest)
    -- The first limit naming the key decides (a foreign header may name it twice).
    for _, l in ipairs(text and parse_limits(ns, text) or {}) do
      if l[5] == key then found = l; break end
    end
  end
  if not found then
    -- Nothing left, or a job whose limits changed shape: let it run.
    moved = moved + unpark(ns, key, 1000)
  else
    local free, at = room(ns, found[1], found[2], found[3], found[4], now, lease)
    if free > 0 then
      moved = moved + unpark(ns, key, free)
      at = now + (found[1] == 'r' and found[3] or lease)
    end
    redis.call('ZADD', index, 'XX', at, key)
  end
end
return moved
