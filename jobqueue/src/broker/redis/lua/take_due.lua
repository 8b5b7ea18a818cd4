-- Moves up to ARGV[2] jobs due by ARGV[1] from the sorted set KEYS[1] into the in-flight
-- list KEYS[2], so that a crash before they reach their queues loses none of them.
-- Returns {job, due time, job, due time, ...}.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2],
  'WITHSCORES')
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('LPUSH', KEYS[2], due[i])
end
return due
