-- Brings back jobs set aside under keys due by ARGV[2] (now) in the namespace ARGV[1], as
-- many as each key's limit has room for; looks at up to ARGV[3] keys. A key still without
-- room is looked at again when it may have some; a concurrency key with jobs left, after a
-- lease (ARGV[4] seconds), in case no release comes. Returns how many jobs came back.
-- KEYS[1] is the index of limit keys, ARGV[1] .. 'jobqueue:limits' (named, so that a
-- cluster sends the call to the node holding the namespace).
local ns, now, max, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local index = KEYS[1]
local moved = 0
for _, key in ipairs(redis.call('ZRANGE', index, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)) do
  local oldest = redis.call('LINDEX', ns .. 'jobqueue:parked:' .. key, -1)
  local found
  for _, l in ipairs(oldest and limits_of(ns, oldest) or {}) do
    if l[5] == key then found = l end
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
