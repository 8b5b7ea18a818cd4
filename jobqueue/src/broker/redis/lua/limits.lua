-- Per-key limits: prepended to the scripts that fetch, settle, unpark and renew. A job's
-- limits are in its payload's `limits` field, each {key, concurrency} or {key, rate, per}.
-- Under the namespace `ns`:
--   jobqueue:limit:<key>   sorted set of the slots taken: running jobs by jid, scored by
--                          when their lease ends; or starts, scored by when they started
--   jobqueue:parked:<key>  the jobs set aside for want of room, oldest at the right
--   jobqueue:limits        the keys with jobs set aside, scored by when to look again

-- The limits of a job and its jid, or nil for a job without any (most jobs: a plain
-- search rules them out before any decoding).
local function limits_of(job)
  if not string.find(job, '"limits":[', 1, true) then return nil end
  local ok, decoded = pcall(cjson.decode, job)
  if not ok or type(decoded) ~= 'table' or type(decoded.limits) ~= 'table' then
    return nil
  end
  return decoded.limits, tostring(decoded.jid)
end

-- How many more jobs limit `l` lets start at `now`; when none, also when one may.
local function room(ns, l, now)
  local key = ns .. 'jobqueue:limit:' .. tostring(l.key)
  local per = tonumber(l.per) or 0
  local n = tonumber(l.concurrency or l.rate) or 0
  local horizon = now
  if l.rate then horizon = now - per end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', horizon)
  local free = n - redis.call('ZCARD', key)
  if free > 0 then return free end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return 0, (tonumber(first[2]) or now) + per
end

-- Takes a slot in every limit of the job, or in none. Returns nil when taken, or the key
-- of a limit without room and when to look at it again.
local function admit(ns, limits, jid, now, lease)
  for _, l in ipairs(limits) do
    local free, at = room(ns, l, now)
    if free <= 0 then return tostring(l.key), at end
  end
  for _, l in ipairs(limits) do
    local key = ns .. 'jobqueue:limit:' .. tostring(l.key)
    if l.concurrency then
      redis.call('ZADD', key, now + lease, jid)
      redis.call('PEXPIRE', key, math.ceil(lease * 1000))
    elseif l.rate then
      local per = tonumber(l.per) or 0
      redis.call('ZADD', key, now, jid .. '@' .. now)
      redis.call('PEXPIRE', key, math.max(1, math.ceil(per * 1000)))
    end
  end
  return nil
end

-- Sets a job aside under `key` until its limit has room; looked at again by `at`.
local function park(ns, key, job, at)
  redis.call('LPUSH', ns .. 'jobqueue:parked:' .. key, job)
  redis.call('ZADD', ns .. 'jobqueue:limits', 'LT', at, key)
end

-- Moves up to `n` of the oldest jobs set aside under `key` to the front of their queues,
-- the oldest first in line; forgets the key when none are left. Returns how many moved.
local function unpark(ns, key, n)
  local list = ns .. 'jobqueue:parked:' .. key
  local jobs = {}
  for _ = 1, n do
    local job = redis.call('RPOP', list)
    if not job then break end
    jobs[#jobs + 1] = job
  end
  for i = #jobs, 1, -1 do
    local ok, decoded = pcall(cjson.decode, jobs[i])
    local queue = 'default'
    if ok and type(decoded) == 'table' and type(decoded.queue) == 'string' then
      queue = decoded.queue
    end
    redis.call('SADD', ns .. 'queues', queue)
    redis.call('RPUSH', ns .. 'queue:' .. queue, jobs[i])
  end
  if redis.call('LLEN', list) == 0 then
    redis.call('ZREM', ns .. 'jobqueue:limits', key)
  end
  if #jobs > 0 then redis.call('PUBLISH', ns .. 'jobqueue:wake', 'queued') end
  return #jobs
end

-- Frees the concurrency slots of a job leaving an in-flight list, and brings back one job
-- set aside under each key it freed.
local function release(ns, job)
  local limits, jid = limits_of(job)
  if not limits then return end
  for _, l in ipairs(limits) do
    local key = tostring(l.key)
    if l.concurrency and redis.call('ZREM', ns .. 'jobqueue:limit:' .. key, jid) == 1 then
      unpark(ns, key, 1)
    end
  end
end
