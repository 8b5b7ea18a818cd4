-- Reliable fetch: moves up to ARGV[1] jobs from the queue lists KEYS[4..], in order, into
-- the in-flight list KEYS[1] of the process ARGV[3], skipping queues paused past ARGV[2]
-- (now) in the sorted set KEYS[2] (member: the queue name ARGV[i] of KEYS[i], score: paused
-- until). A process that takes a job is listed in the fetchers set KEYS[3] in the same
-- call, so that its in-flight list is never left where recovery does not look.
-- Collapse markers are read under the lock prefix ARGV[#KEYS + 1] (marker.lua).
-- Returns, for each queue it took from, its index and its jobs, oldest first, and their
-- markers' values when markers are read: {index, {payload, ...}, [{marker, ...}], ...}.
--
-- A queue's oldest jobs (its tail) are moved together: LRANGE, LTRIM, then LPUSH, leaving
-- the lists as one LMOVE per job would, for three calls instead of one per job.
local max = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local locks = ARGV[#KEYS + 1]
-- LPUSH takes this many jobs at a time: Lua's unpack has a bounded stack.
local chunk = 1000
local out = {}
local taken = 0
for i = 4, #KEYS do
  local until_ = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if not until_ or tonumber(until_) <= now then
    local jobs = redis.call('LRANGE', KEYS[i], taken - max, -1)
    local n = #jobs
    if n > 0 then
      redis.call('LTRIM', KEYS[i], 0, -n - 1)
      -- The tail first: the in-flight list's head ends with the newest taken, as LMOVE
      -- RIGHT LEFT leaves it.
      local oldest = {}
      for k = n, 1, -1 do oldest[#oldest + 1] = jobs[k] end
      for from = 1, n, chunk do
        redis.call('LPUSH', KEYS[1], unpack(oldest, from, math.min(from + chunk - 1, n)))
      end
      out[#out + 1] = i - 3
      out[#out + 1] = oldest
      if locks ~= '' then out[#out + 1] = newest(locks, oldest) end
      taken = taken + n
    end
  end
  if taken >= max then break end
end
if taken > 0 then redis.call('SADD', KEYS[3], ARGV[3]) end
return out
