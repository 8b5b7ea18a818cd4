-- Releases each lock KEYS[i] that its owner ARGV[i] still holds; returns how many it
-- released. One call for many locks: an acknowledgement releases its batch's together.
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    released = released + redis.call('DEL', KEYS[i])
  end
end
return released
