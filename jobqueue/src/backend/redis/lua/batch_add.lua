-- Adds jobs to a batch, creating it if new. KEYS[1] the batch hash, KEYS[2] its pending
-- set. ARGV[1] TTL in seconds; ARGV[2] description; ARGV[3] and ARGV[4] the callbacks'
-- payloads, on_complete then on_success ('' for none), kept only when the batch is
-- created; ARGV[5..] the job ids.
if redis.call('HSETNX', KEYS[1], 'description', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'complete_payload', ARGV[3], 'success_payload', ARGV[4],
    'total', 0, 'succeeded', 0, 'failed', 0)
end
for i = 5, #ARGV do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'total', 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
