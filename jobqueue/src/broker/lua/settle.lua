-- Moves one job out of the in-flight list KEYS[1], only if it is still there (a process
-- that recovered it first has already put it back).
--   KEYS[2] destination: a queue list or a sorted set; KEYS[3] the `queues` set
--   ARGV[1] the payload as fetched   ARGV[2] op: lpush | rpush | zadd | dead | discard
--   ARGV[3] the payload to store     ARGV[4] queue name (lpush, rpush) or score (zadd, dead)
--   ARGV[5] dead: drop scores below   ARGV[6] dead: keep this many   ARGV[7] wake channel
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then
  return 0
end
local op = ARGV[2]
if op == 'lpush' or op == 'rpush' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call(op, KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[7], 'queued')
elseif op == 'zadd' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('PUBLISH', ARGV[7], 'scheduled')
elseif op == 'dead' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[6]) + 1))
end
return 1
