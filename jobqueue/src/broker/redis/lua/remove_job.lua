-- Removes the job with jid ARGV[1] from the queue list KEYS[1] or the sorted sets
-- KEYS[2] (schedule) and KEYS[3] (retry). Returns 1 if found.
local needle = '"jid":"' .. ARGV[1] .. '"'
for _, job in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.find(job, needle, 1, true) then
    redis.call('LREM', KEYS[1], 1, job)
    return 1
  end
end
for i = 2, 3 do
  for _, job in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if string.find(job, needle, 1, true) then
      redis.call('ZREM', KEYS[i], job)
      return 1
    end
  end
end
return 0
