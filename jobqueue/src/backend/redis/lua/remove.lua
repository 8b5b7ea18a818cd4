-- Removes the jobs ARGV[2..] (exactly as stored) from the list KEYS[1]: a queue, or the
-- jobs set aside under the limit key ARGV[1], which then leaves the index of limit keys
-- KEYS[2] once it holds none. Returns how many were there.
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
if ARGV[1] ~= '' and redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return removed
