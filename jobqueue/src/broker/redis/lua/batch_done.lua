-- Records that a job of a batch finished, once per job id. KEYS[1] the batch hash, KEYS[2]
-- its pending set, KEYS[3] the `queues` set. ARGV[1] the job id, ARGV[2] '1' succeeded or
-- '0' failed, ARGV[3] the wake channel. The call that finishes the batch pushes its
-- callbacks: on_complete always, on_success when no job failed; exactly once.
-- Returns 0 (already counted), 1 (counted) or 2 (counted, and the batch finished).
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[2] == '1' and 'succeeded' or 'failed', 1)
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('HSETNX', KEYS[1], 'finished', 1) == 0 then
  return 1
end
local m = redis.call('HMGET', KEYS[1], 'complete_key', 'complete_queue', 'complete_payload',
  'success_key', 'success_queue', 'success_payload', 'failed')
local pushed = false
if m[3] and m[3] ~= '' then
  redis.call('SADD', KEYS[3], m[2])
  redis.call('LPUSH', m[1], m[3])
  pushed = true
end
if m[6] and m[6] ~= '' and tonumber(m[7]) == 0 then
  redis.call('SADD', KEYS[3], m[5])
  redis.call('LPUSH', m[4], m[6])
  pushed = true
end
if pushed then redis.call('PUBLISH', ARGV[3], 'queued') end
return 2
