-- Adds jobs to a batch, creating it if new. KEYS[1] the batch hash, KEYS[2] its pending
-- set. ARGV[1] TTL in seconds; ARGV[2] description; ARGV[3..8] the callbacks: for
-- on_complete then on_success, the queue key, the queue name and the payload ('' for
-- none), kept only when the batch is created; ARGV[9..] the job ids.
if redis.call('HSETNX', KEYS[1], 'description', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1],
    'complete_key', ARGV[3], 'complete_queue', ARGV[4], 'complete_payload', ARGV[5],
    'success_key', ARGV[6], 'success_queue', ARGV[7], 'success_payload', ARGV[8],
    'total', 0, 'succeeded', 0, 'failed', 0)
end
for i = 9, #ARGV do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'total', 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
