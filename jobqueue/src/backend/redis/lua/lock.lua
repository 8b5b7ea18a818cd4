-- Takes or renews the lock KEYS[1] for owner ARGV[1] for ARGV[2] milliseconds.
-- Returns nothing when ARGV[1] holds it now, else the holder that kept it.
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return holder
