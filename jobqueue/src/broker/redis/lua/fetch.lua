-- Reliable fetch: moves up to ARGV[1] jobs from the queue lists KEYS[3..], in order, into
-- the process's in-flight list KEYS[1], skipping queues paused past ARGV[2] (now) in the
-- sorted set KEYS[2] (member: queue name ARGV[i + 4], score: paused until).
-- A job with limits takes its slots for the process ARGV[6] or is set aside under the
-- namespace ARGV[3] (a full concurrency key is looked at again after ARGV[4] seconds); at
-- most ARGV[5] jobs are set aside per call, to keep the call short.
-- Returns {jobs set aside, '', queue index, payload, ...}.
local max, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local ns, lease, max_parked, process = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local out = {0, ''}
local taken, parked = 0, 0
for i = 3, #KEYS do
  local until_ = redis.call('ZSCORE', KEYS[2], ARGV[i + 4])
  if not until_ or tonumber(until_) <= now then
    while taken < max and parked < max_parked do
      local job = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
      if not job then break end
      local limits = limits_of(ns, job)
      local full, at
      if limits then full, at = admit(ns, limits, process, now, lease) end
      if full then
        redis.call('LPOP', KEYS[1])
        park(ns, full, job, at)
        parked = parked + 1
      else
        taken = taken + 1
        out[#out + 1] = i - 2
        out[#out + 1] = job
      end
    end
  end
  if taken >= max or parked >= max_parked then break end
end
out[1] = parked
-- The schedulers look at set-aside jobs again when their keys have room.
if parked > 0 then redis.call('PUBLISH', ns .. 'jobqueue:wake', 'scheduled') end
return out
