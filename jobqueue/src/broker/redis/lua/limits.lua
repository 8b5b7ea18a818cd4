-- Per-key limits: prepended to the scripts that admit, settle and unpark. A job's limits
-- are its payload's `limits` field: per limit, `c2 KEY` (at most 2 running) or `r100/60 KEY`
-- (at most 100 starts per 60 s), space-separated; the broker's Rust side reads them and
-- passes them in, except to unpark. Under the namespace `ns`:
--   jobqueue:limit:<key>   the slots taken: for a concurrency limit, a hash of how many
--                          each process holds (a process's slots are freed when its jobs
--                          leave its in-flight list, or once its heartbeat, Sidekiq's
--                          process hash, has lapsed); for a rate limit, a list of start
--                          times, oldest first
--   jobqueue:parked:<key>  the jobs set aside for want of room, oldest at the right
--   jobqueue:limits        the keys with jobs set aside, scored by when to look again
-- A limit is {kind ('c' or 'r'), limit, period, the key's Redis key, key}.

local function limit(ns, kind, n, per, key)
  return {kind, tonumber(n), tonumber(per) or 0, ns .. 'jobqueue:limit:' .. key, key}
end

-- The limits in a payload (used only to look at a set-aside job again).
local function limits_of(ns, job)
  local at = string.find(job, '"limits":"', 1, true)
  if not at then return {} end
  while true do
    local later = string.find(job, '"limits":"', at + 1, true)
    if not later then break end
    at = later
  end
  local limits = {}
  local text = string.match(job, '^"limits":"([^"]*)"', at) or ''
  for kind, n, per, key in string.gmatch(text, '(%a)(%d+)/?([%d.e+-]*) (%S+)') do
    if tonumber(n) > 0 then limits[#limits + 1] = limit(ns, kind, n, per, key) end
  end
  return limits
end

-- How many more jobs a limit (`kind` 'c' or 'r', `n`, period `per`, slots at Redis key
-- `slots`) lets start at `now`; when none, also when to look again (a concurrency key
-- after `lease`, in case no release comes). Old starts and the slots of processes without
-- a heartbeat are cleared only when the limit looks full.
local function room(ns, kind, n, per, slots, now, lease)
  if kind == 'r' then
    local free = n - redis.call('LLEN', slots)
    if free > 0 then return free end
    local first = tonumber(redis.call('LINDEX', slots, 0))
    while first and first <= now - per do
      redis.call('LPOP', slots)
      first = tonumber(redis.call('LINDEX', slots, 0))
    end
    free = n - redis.call('LLEN', slots)
    if free > 0 then return free end
    return 0, (first or now) + per
  end
  local held = 0
  for _, count in ipairs(redis.call('HVALS', slots)) do held = held + tonumber(count) end
  if held < n then return n - held end
  local holders = redis.call('HGETALL', slots)
  for i = 1, #holders, 2 do
    if redis.call('EXISTS', ns .. holders[i]) == 0 then
      redis.call('HDEL', slots, holders[i])
      held = held - tonumber(holders[i + 1])
    end
  end
  if held < n then return n - held end
  return 0, now + lease
end

-- Takes a slot for `process` in a limit found to have room.
local function take(kind, per, slots, process, now)
  if kind == 'r' then
    redis.call('RPUSH', slots, now)
    redis.call('PEXPIRE', slots, math.max(1, math.ceil(per * 1000)))
  else
    redis.call('HINCRBY', slots, process, 1)
  end
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

-- Frees the concurrency slots `process` held for a job leaving its in-flight list (the
-- keys, space-separated), and brings back one job set aside under each. A job the process
-- holds no slot for (freed when the process looked dead, or never admitted because the
-- process died first) frees nothing.
local function release(ns, process, keys)
  for key in string.gmatch(keys, '%S+') do
    local slots = ns .. 'jobqueue:limit:' .. key
    -- Emptied, the field goes, and with the last field the key.
    if redis.call('HINCRBY', slots, process, -1) <= 0 then redis.call('HDEL', slots, process) end
    if redis.call('ZSCORE', ns .. 'jobqueue:limits', key) then unpark(ns, key, 1) end
  end
end
