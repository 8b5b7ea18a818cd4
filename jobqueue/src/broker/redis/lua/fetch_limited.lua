-- Reliable fetch for a process that runs jobs with limits: as fetch.lua, and a job with
-- limits takes its slots as it moves (limits.lua); one without room is set aside instead and
-- does not count. Takes up to ARGV[1] jobs, looking at up to ARGV[#KEYS + 1]; the process
-- is ARGV[#KEYS + 2], the namespace ARGV[#KEYS + 3], and a full concurrency key is looked
-- at again after ARGV[#KEYS + 4] seconds; collapse markers are read under the lock prefix
-- ARGV[#KEYS + 5] (marker.lua). Keys and arguments up to #KEYS are fetch.lua's (the queues
-- from KEYS[4], the fetchers set KEYS[3]). Returns {jobs looked at, {...}}, the second as
-- fetch.lua's reply: each queue's index and the jobs taken from it, and their markers'
-- values.
local max, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local scan, process = tonumber(ARGV[#KEYS + 1]), ARGV[#KEYS + 2]
local ns, lease = ARGV[#KEYS + 3], tonumber(ARGV[#KEYS + 4])
local locks = ARGV[#KEYS + 5]
local out, full = {}, {}
local taken, looked, parked = 0, 0, false
for i = 4, #KEYS do
  local until_ = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if not until_ or tonumber(until_) <= now then
    local jobs = {}
    while taken < max and looked < scan do
      local job = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
      if not job then break end
      looked = looked + 1
      if admit(ns, job, process, now, lease, full) then
        taken = taken + 1
        jobs[#jobs + 1] = job
      else
        -- Set aside: out of the in-flight list, whose head it is.
        redis.call('LPOP', KEYS[1])
        parked = true
      end
    end
    if #jobs > 0 then
      out[#out + 1] = i - 3
      out[#out + 1] = jobs
      if locks ~= '' then out[#out + 1] = newest(locks, jobs) end
    end
  end
  if taken >= max or looked >= scan then break end
end
-- Listed as a fetcher in the same call as it takes jobs (see fetch.lua).
if taken > 0 then redis.call('SADD', KEYS[3], process) end
-- The schedulers look at set-aside jobs again when their keys have room.
if parked then redis.call('PUBLISH', ns .. 'jobqueue:wake', 'scheduled') end
return {looked, out}
