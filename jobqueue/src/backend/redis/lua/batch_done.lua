-- Records that a job of a batch finished, once per job id. KEYS[1] the batch hash, KEYS[2]
-- its pending set. ARGV[1] the job id, ARGV[2] '1' succeeded or '0' failed, ARGV[3] the
-- namespace, ARGV[4] now, ARGV[5] how long a finished batch lingers (seconds). The call
-- that finishes the batch puts its callbacks in the `schedule` set, due now, exactly
-- once: on_complete always, on_success when no job failed; a worker's scheduler then
-- admits them as it does any due job. The batch's hash then expires after the linger.
-- Returns 0 (already counted), 1 (counted) or 2 (counted, and the batch finished).
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[2] == '1' and 'succeeded' or 'failed', 1)
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('HSETNX', KEYS[1], 'finished', 1) == 0 then
  return 1
end
local m = redis.call('HMGET', KEYS[1], 'complete_payload', 'success_payload', 'failed')
local scheduled = false
if m[1] and m[1] ~= '' then
  redis.call('ZADD', ARGV[3] .. 'schedule', ARGV[4], m[1])
  scheduled = true
end
if m[2] and m[2] ~= '' and tonumber(m[3]) == 0 then
  redis.call('ZADD', ARGV[3] .. 'schedule', ARGV[4], m[2])
  scheduled = true
end
if scheduled then wake(ARGV[3], 'scheduled') end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 2
