-- Per-key limits: prepended to the scripts that fetch, settle, unpark and renew. A job's
-- limits are in its payload's `limits` field, each {key, concurrency} or {key, rate, per}.
-- Under the namespace `ns`:
--   jobqueue:limit:<key>   the slots taken: for a concurrency limit, a sorted set of the
--                          running jobs (by a digest of the payload as fetched) scored by
--                          when their lease ends; for a rate limit, a list of start times,
--                          oldest first
--   jobqueue:parked:<key>  the jobs set aside for want of room, oldest at the right
--   jobqueue:limits        the keys with jobs set aside, scored by when to look again

-- The limits of a job and the id its slots are held by, or nil for a job without any (most jobs: a plain
-- search rules them out before any decoding). Only the `limits` array is decoded; the
-- top-level one is the last (arguments come first, and a JSON string cannot hold the
-- pattern unescaped).
local function limits_of(job)
  local at = string.find(job, '"limits":[', 1, true)
  if not at then return nil end
  while true do
    local later = string.find(job, '"limits":[', at + 1, true)
    if not later then break end
    at = later
  end
  local ok, limits = pcall(cjson.decode, string.match(job, '%b[]', at + 9))
  if not ok or type(limits) ~= 'table' then return nil end
  return limits, redis.sha1hex(job)
end

-- How many more jobs limit `l` lets start at `now`; when none, also when one may. Expired
-- slots and old starts are cleared only when the limit looks full.
local function room(ns, l, now)
  local key = ns .. 'jobqueue:limit:' .. tostring(l.key)
  local n = tonumber(l.concurrency or l.rate) or 0
  if l.rate then
    local free = n - redis.call('LLEN', key)
    if free > 0 then return free end
    -- Starts older than the period leave from the front of the list.
    local per = tonumber(l.per) or 0
    local first = tonumber(redis.call('LINDEX', key, 0))
    while first and first <= now - per do
      redis.call('LPOP', key)
      first = tonumber(redis.call('LINDEX', key, 0))
    end
    free = n - redis.call('LLEN', key)
    if free > 0 then return free end
    return 0, (first or now) + per
  end
  local free = n - redis.call('ZCARD', key)
  if free > 0 then return free end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  free = n - redis.call('ZCARD', key)
  if free > 0 then return free end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return 0, tonumber(first[2]) or now
end

-- Takes a slot in every limit of the job, or in none. Returns nil when taken, or the key
-- of a limit without room and when to look at it again. A concurrency key's lifetime is
-- set when it is created and kept up by the heartbeats' renewals.
local function admit(ns, limits, id, now, lease)
  for _, l in ipairs(limits) do
    local free, at = room(ns, l, now)
    if free <= 0 then return tostring(l.key), at end
  end
  for _, l in ipairs(limits) do
    local key = ns .. 'jobqueue:limit:' .. tostring(l.key)
    if l.concurrency then
      redis.call('ZADD', key, now + lease, id)
      if redis.call('ZCARD', key) == 1 then
        redis.call('PEXPIRE', key, math.ceil(lease * 1000))
      end
    elseif l.rate then
      redis.call('RPUSH', key, now)
      redis.call('PEXPIRE', key, math.max(1, math.ceil((tonumber(l.per) or 0) * 1000)))
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

-- Frees the concurrency slots a job leaving an in-flight list held, given as "id key ..."
-- (read from the payload by the caller), and brings back one job set aside under each key
-- it freed.
local function release(ns, slots)
  local id
  for word in string.gmatch(slots, '%S+') do
    if not id then
      id = word
    elseif redis.call('ZREM', ns .. 'jobqueue:limit:' .. word, id) == 1
        and redis.call('ZSCORE', ns .. 'jobqueue:limits', word) then
      unpark(ns, word, 1)
    end
  end
end
