-- Per-key limits, after lib.lua in the scripts that fetch, settle and unpark. A job's
-- limits are its header's (parse_limits): per limit, at most N running (`c`) or at most N
-- starts per period (`r`). Under the namespace `ns`:
--   jobqueue:limit:<key>   the slots taken, a list: for a concurrency limit, the running
--                          jobs' slot ids, `JID@PROCESS` (a slot is freed when its job
--                          leaves the in-flight list, or once the process's heartbeat,
--                          Sidekiq's process hash, has lapsed); for a rate limit, start
--                          times, oldest first
--   jobqueue:parked:<key>  the jobs set aside for want of room, oldest at the right
--   jobqueue:limits        the keys with jobs set aside, scored by when to look again
-- A limit is {kind ('c' or 'r'), limit, period, the key's Redis key, key}.

-- How many more jobs a limit (`kind` 'c' or 'r', `n`, period `per`, slots at Redis key
-- `slots`) lets start at `now`; when none, also when to look again (a concurrency key
-- after `lease`, in case no release comes). Old starts and the slots of processes without
-- a heartbeat are cleared only when the limit looks full.
local function room(ns, kind, n, per, slots, now, lease)
  local held = redis.call('LLEN', slots)
  if held < n then return n - held end
  if kind == 'r' then
    local first = tonumber(redis.call('LINDEX', slots, 0))
    while first and first <= now - per do
      redis.call('LPOP', slots)
      held = held - 1
      first = tonumber(redis.call('LINDEX', slots, 0))
    end
    if held < n then return n - held end
    return 0, (first or now) + per
  end
  local alive = {}
  for _, slot in ipairs(redis.call('LRANGE', slots, 0, -1)) do
    local process = string.match(slot, '@(.*)$') or ''
    if alive[process] == nil then alive[process] = redis.call('EXISTS', ns .. process) == 1 end
    if not alive[process] then
      redis.call('LREM', slots, 1, slot)
      held = held - 1
    end
  end
  if held < n then return n - held end
  return 0, now + lease
end

-- Sets a job aside under `key` until its limit has room; looked at again by `at`.
local function park(ns, key, job, at)
  redis.call('LPUSH', parked_key(ns, key), job)
  redis.call('ZADD', limits_key(ns), 'LT', at, key)
end

-- Takes the slots of `limits` for the job `jid` just moved into the in-flight list of
-- `process`, at `now`; a job without room in one of its limits takes none and is set aside
-- under that key (looked at again after `lease` seconds if it is a concurrency key). A
-- slot is taken first and checked after, as `RPUSH` answers with the count. `full` holds
-- the keys this script has found full, and when to look at them again: nothing frees a
-- slot while a script runs, so a key is asked once. Returns whether the job may run.
local function admit(ns, limits, jid, job, process, now, lease, full)
  local id = jid .. '@' .. process
  for i, l in ipairs(limits) do
    local slot = l[1] == 'r' and now or id
    local at = full[l[5]]
    if not at and redis.call('RPUSH', l[4], slot) > l[2] then
      redis.call('RPOP', l[4])
      local free, when = room(ns, l[1], l[2], l[3], l[4], now, lease)
      if free > 0 then redis.call('RPUSH', l[4], slot) else at = when end
    end
    if at then
      for j = 1, i - 1 do redis.call('RPOP', limits[j][4]) end
      full[l[5]] = at
      park(ns, l[5], job, at)
      return false
    end
  end
  for _, l in ipairs(limits) do
    if l[1] == 'r' then redis.call('PEXPIRE', l[4], math.max(1, math.ceil(l[3] * 1000))) end
  end
  return true
end

-- Moves up to `n` of the oldest jobs set aside under `key` to the front of their queues,
-- the oldest first in line; forgets the key when none are left. Returns how many moved.
local function unpark(ns, key, n)
  local list = parked_key(ns, key)
  local by_queue, order = {}, {}
  local moved = 0
  for _ = 1, n do
    local job = redis.call('RPOP', list)
    if not job then break end
    moved = moved + 1
    local decoded = decode(job)
    local queue = 'default'
    if decoded and type(decoded.queue) == 'string' then queue = decoded.queue end
    if not by_queue[queue] then
      by_queue[queue] = {}
      order[#order + 1] = queue
    end
    -- The oldest goes to the front last, so that it is first in line.
    table.insert(by_queue[queue], 1, job)
  end
  for _, queue in ipairs(order) do push_queue(ns, queue, by_queue[queue], true) end
  if redis.call('LLEN', list) == 0 then redis.call('ZREM', limits_key(ns), key) end
  if moved > 0 then wake(ns, 'queued') end
  return moved
end

-- Frees the concurrency slots of a job leaving its in-flight list, given as its slot id and
-- then the keys, space-separated, and brings back one job set aside under each key. A job
-- that holds no slot (freed when its process looked dead) frees nothing; a key of another
-- type (written by something else) is left as it is.
local function release(ns, slots_text)
  local id
  for word in string.gmatch(slots_text, '%S+') do
    if not id then
      id = word
    else
      redis.pcall('LREM', slots_key(ns, word), 1, id)
      if redis.call('ZSCORE', limits_key(ns), word) then unpark(ns, word, 1) end
    end
  end
end
