-- Reliable fetch: moves up to ARGV[1] jobs from the queue lists KEYS[3..], in order, into
-- the process's in-flight list KEYS[1], skipping queues paused past ARGV[2] (now) in the
-- sorted set KEYS[2] (member: the queue name ARGV[i] of KEYS[i], score: paused until).
-- Collapse markers are read under the lock prefix ARGV[#KEYS + 1] (marker.lua).
-- Returns {queue index, payload, ...}, with the marker's value after each payload when
-- markers are read.
local max = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local locks = ARGV[#KEYS + 1]
local out = {}
local taken = 0
for i = 3, #KEYS do
  local until_ = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if not until_ or tonumber(until_) <= now then
    while taken < max do
      local job = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
      if not job then break end
      taken = taken + 1
      out[#out + 1] = i - 2
      out[#out + 1] = job
      if locks ~= '' then out[#out + 1] = newest(locks, job) end
    end
  end
  if taken >= max then break end
end
return out
