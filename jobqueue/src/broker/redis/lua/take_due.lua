-- Moves up to ARGV[2] jobs due by ARGV[1] from the sorted set KEYS[1] into the in-flight
-- list KEYS[2], so that a crash before they reach their queues loses none of them.
-- Returns {job, due time, job, due time, ...}.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2],
  'WITHSCORES')
local n = #due / 2
if n == 0 then return due end
-- The jobs due are the set's first n by rank (scores from -inf), so one call removes them.
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)
-- One push per 500 jobs, in their order (unpack's stack is limited).
local jobs = {}
for i = 1, #due, 2 do
  jobs[#jobs + 1] = due[i]
  if #jobs == 500 then
    redis.call('LPUSH', KEYS[2], unpack(jobs))
    jobs = {}
  end
end
if #jobs > 0 then redis.call('LPUSH', KEYS[2], unpack(jobs)) end
return due
