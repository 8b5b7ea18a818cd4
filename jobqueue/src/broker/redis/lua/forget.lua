-- Forgets the dead process ARGV[1] (removes it from the fetchers set KEYS[1]) once its
-- process hash KEYS[3] is gone and its in-flight list KEYS[2] is empty.
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('LLEN', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
