-- Forgets the process ARGV[1]: its entry in `processes` (KEYS[1]) and its heartbeat's
-- hashes (KEYS[3..5]) go now; it leaves the fetchers set KEYS[2], which recovery reads,
-- once its in-flight list KEYS[6] is empty. Returns 1 when it left the fetchers set.
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if redis.call('LLEN', KEYS[6]) == 0 then
  return redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
