-- Moves the member ARGV[1] out of the sorted set KEYS[1], if it is there, to KEYS[2] as
-- ARGV[2] says (lpush | rpush onto a queue list, also listed in the `queues` set KEYS[3];
-- zadd | dead into a sorted set at score ARGV[4]; discard), storing ARGV[3].
--   ARGV[4] the queue name (lpush, rpush) or the score; ARGV[5] dead: drop scores below;
--   ARGV[6] dead: keep this many; ARGV[7] the wake channel.
-- Returns 1 if it moved, 0 if it was not there.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local op, stored, target = ARGV[2], ARGV[3], ARGV[4]
if op == 'lpush' or op == 'rpush' then
  redis.call('SADD', KEYS[3], target)
  redis.call(op, KEYS[2], stored)
  redis.call('PUBLISH', ARGV[7], 'queued')
elseif op == 'zadd' then
  redis.call('ZADD', KEYS[2], target, stored)
  redis.call('PUBLISH', ARGV[7], 'scheduled')
elseif op == 'dead' then
  redis.call('ZADD', KEYS[2], target, stored)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[6]) + 1))
end
return 1
