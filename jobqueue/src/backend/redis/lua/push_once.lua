-- Pushes each job unless its marker is set, setting the marker, in one step per call: a
-- relay that pushes the same jobs again (after a lost reply, or a crash before it recorded
-- the push) pushes none twice.
--   ARGV[1] the namespace   ARGV[2] the markers' time to live, in milliseconds
--   then four per job: its marker (a key of the key/value store, under jobqueue:lock:);
--   its queue; its score in the schedule set ('' to push it onto its queue); the payload.
-- Returns one 1 (pushed) or 0 (pushed before) per job.
-- Each job is pushed before its marker is set: a script that fails midway (Redis keeps the
-- writes made before the failure) leaves no marker without its job.
local ns, ttl = ARGV[1], ARGV[2]
local pushed, queued, scheduled = {}, false, false
for i = 3, #ARGV, 4 do
  local marker = ns .. 'jobqueue:lock:' .. ARGV[i]
  if redis.call('EXISTS', marker) == 0 then
    if ARGV[i + 2] == '' then
      push_queue(ns, ARGV[i + 1], {ARGV[i + 3]}, false)
      queued = true
    else
      redis.call('ZADD', ns .. 'schedule', ARGV[i + 2], ARGV[i + 3])
      scheduled = true
    end
    redis.call('SET', marker, '1', 'PX', ttl)
    pushed[#pushed + 1] = 1
  else
    pushed[#pushed + 1] = 0
  end
end
if queued then wake(ns, 'queued') end
if scheduled then wake(ns, 'scheduled') end
return pushed
