-- Reliable fetch: moves up to ARGV[1] jobs from the queue lists KEYS[2..], in order,
-- into the process's in-flight list KEYS[1]. Returns {queue index, payload, ...}.
local max = tonumber(ARGV[1])
local out = {}
local taken = 0
for i = 2, #KEYS do
  while taken < max do
    local job = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
    if not job then break end
    taken = taken + 1
    out[#out + 1] = i - 1
    out[#out + 1] = job
  end
  if taken >= max then break end
end
return out
