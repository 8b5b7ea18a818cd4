-- Reliable fetch: moves up to ARGV[1] jobs from the queue lists KEYS[3..], in order, into
-- the in-flight list KEYS[1], skipping queues paused past ARGV[2] (now) in the sorted set
-- KEYS[2] (member: the queue name ARGV[i] of KEYS[i], score: paused until). Then, after the
-- queues' names (n = #KEYS): ARGV[n + 1] the lock prefix for collapse markers ('' reads
-- none), ARGV[n + 2] the namespace, ARGV[n + 3] the process (listed among the fetchers that
-- recovery looks at, in the same step that gives it jobs); and for a process that applies
-- limits, ARGV[n + 4] how many jobs to look at and ARGV[n + 5] the lease in seconds
-- (without limits, ARGV[n + 4] is '').
--
-- Returns {jobs looked at, groups}, a group per queue taken from: its index, its jobs
-- oldest first, their collapse markers' values when read (false: the header names none;
-- '': expired), and the positions among its jobs of those whose header limits cannot be
-- applied (they take no slot, and the worker refuses them).
local n = #KEYS
local max, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local locks, ns, process = ARGV[n + 1], ARGV[n + 2], ARGV[n + 3]
local scan, lease = tonumber(ARGV[n + 4]), tonumber(ARGV[n + 5])

-- The newest job of each job's collapse marker, read with one MGET per 500 (a
-- `redis.call` costs about as much as the GET it makes).
local function newest(jobs)
  local markers, keys, at = {}, {}, {}
  for k, job in ipairs(jobs) do
    markers[k] = false
    local collapse = header(job)
    if collapse then
      keys[#keys + 1] = locks .. collapse
      at[#keys] = k
    end
  end
  for from = 1, #keys, 500 do
    local values = redis.call('MGET', unpack(keys, from, math.min(from + 499, #keys)))
    for i = 1, #values do markers[at[from + i - 1]] = values[i] or '' end
  end
  return markers
end

-- A queue's oldest `want` jobs (its tail), moved together: LRANGE, LTRIM, then LPUSH,
-- leaving the lists as one LMOVE per job would, for three calls instead of one per job.
local function take_all(queue, want)
  local jobs = redis.call('LRANGE', queue, -want, -1)
  local count = #jobs
  if count == 0 then return jobs end
  redis.call('LTRIM', queue, 0, -count - 1)
  -- The tail first: the in-flight list's head ends with the newest taken, as LMOVE
  -- RIGHT LEFT leaves it.
  local oldest = {}
  for k = count, 1, -1 do oldest[#oldest + 1] = jobs[k] end
  for from = 1, count, 1000 do
    redis.call('LPUSH', KEYS[1], unpack(oldest, from, math.min(from + 999, count)))
  end
  return oldest
end

local out, full = {}, {}
local taken, looked, parked = 0, 0, false

-- Up to `want` jobs of one queue, one at a time, each taking its slots as it moves, or set
-- aside; a job whose limits cannot be applied stays in flight without a slot, noted in
-- `bad`.
local function take_each(queue, want, bad)
  local jobs = {}
  while #jobs < want and looked < scan do
    local job = redis.call('LMOVE', queue, KEYS[1], 'RIGHT', 'LEFT')
    if not job then break end
    looked = looked + 1
    local _, text, jid = header(job)
    local limits = {}
    if text and text ~= '' then limits = parse_limits(ns, text) end
    local ok, admitted = true, true
    if limits and #limits > 0 then
      -- A slot is named `JID@PROCESS`: a jid of printable ASCII without `@` or spaces.
      if jid and string.find(jid, '^[!-?A-~]+$') then
        ok, admitted = pcall(admit, ns, limits, jid, job, process, now, lease, full)
      else
        ok = false
      end
    end
    if not limits or not ok then
      jobs[#jobs + 1] = job
      bad[#bad + 1] = #jobs
    elseif admitted then
      jobs[#jobs + 1] = job
    else
      -- Set aside: out of the in-flight list, whose head it is.
      redis.call('LPOP', KEYS[1])
      parked = true
    end
  end
  return jobs
end

for i = 3, n do
  local until_ = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if not until_ or tonumber(until_) <= now then
    local jobs, bad = nil, {}
    if scan then
      jobs = take_each(KEYS[i], max - taken, bad)
    else
      jobs = take_all(KEYS[i], max - taken)
      looked = looked + #jobs
    end
    if #jobs > 0 then
      out[#out + 1] = {i - 2, jobs, locks ~= '' and newest(jobs) or {}, bad}
      taken = taken + #jobs
    end
  end
  if taken >= max or (scan and looked >= scan) then break end
end
-- A process forgotten while it was thought dead is listed again before it holds a job
-- recovery would not see.
if taken > 0 then redis.call('SADD', ns .. 'jobqueue:fetchers', process) end
-- The schedulers look at set-aside jobs again when their keys have room.
if parked then wake(ns, 'scheduled') end
return {looked, out}
