-- Renews, until ARGV[2] (epoch seconds) and by ARGV[3] milliseconds for the keys, the
-- concurrency slots of every job in the in-flight list KEYS[1] (namespace ARGV[1]): a job
-- holds its slots from its fetch until it leaves the list, however long it waits to start.
local ns, until_, ttl = ARGV[1], ARGV[2], ARGV[3]
for _, job in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local limits, id = limits_of(job)
  for _, l in ipairs(limits or {}) do
    if l.concurrency then
      local key = ns .. 'jobqueue:limit:' .. tostring(l.key)
      if redis.call('ZADD', key, 'XX', 'CH', until_, id) == 1 then
        redis.call('PEXPIRE', key, ttl)
      end
    end
  end
end
return 0
