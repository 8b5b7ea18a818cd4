-- Removes the job with jid ARGV[2] from the jobs set aside under limit keys (namespace
-- ARGV[1], layout in limits.lua), forgetting a key left with none. Returns the key it
-- waited under, or nil. KEYS[1] is the index of limit keys, ARGV[1] .. 'jobqueue:limits'.
local ns = ARGV[1]
local index = KEYS[1]
local needle = '"jid":"' .. ARGV[2] .. '"'
for _, key in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local list = ns .. 'jobqueue:parked:' .. key
  for _, job in ipairs(redis.call('LRANGE', list, 0, -1)) do
    if string.find(job, needle, 1, true) then
      redis.call('LREM', list, 1, job)
      if redis.call('LLEN', list) == 0 then redis.call('ZREM', index, key) end
      return key
    end
  end
end
return nil
