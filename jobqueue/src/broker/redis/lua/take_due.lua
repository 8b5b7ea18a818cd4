-- Takes up to ARGV[2] jobs due by ARGV[1] out of the sorted set KEYS[1].
--
-- A job moves straight to its queue, stamped with `enqueued_at` ARGV[3], when ARGV[3] is
-- not empty and the job needs nothing from the client: its payload begins with the
-- header Envelope writes first (collapse, limits, jid, class, queue, enqueued_at, none
-- of them escaped), its class is not one of ARGV[9..] (classes whose mechanisms act at
-- enqueue), and the stamped payload is at most ARGV[4] bytes. Every other job goes into
-- the in-flight list KEYS[2] of the process ARGV[8], so that a crash before the process
-- moves it on loses none; the process is listed in the fetchers set KEYS[4] in the same
-- call, so that recovery looks at that list.
--   KEYS[3] the `queues` set   ARGV[5] the prefix of the queue keys (the namespace)
--   ARGV[6] the channel that wakes fetching workers
-- Returns {{due time of each job moved}, {job, due time, job, due time, ...}, names}, where
-- names is {jid, class, queue, ...} of each job moved when ARGV[7] is '1' (for the
-- process's enqueue spans), and empty otherwise.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2],
  'WITHSCORES')
local n = #due / 2
if n == 0 then return {{}, {}, {}} end
-- The jobs due are the set's first n by rank (scores from -inf), so one call removes them.
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)

local stamp, named = ARGV[3], ARGV[7] == '1'
local max = tonumber(ARGV[4])
local through_client = {}
for i = 9, #ARGV do through_client[ARGV[i]] = true end

-- The job stamped for its queue, with its queue, class and jid; nil when it must pass
-- through the client.
local function direct(job)
  if stamp == '' or string.byte(job, 1) ~= 123 then return nil end
  local at = 2
  local _, e = string.find(job, '^"collapse":"[^"\\]*",', at)
  if e then at = e + 1 end
  _, e = string.find(job, '^"limits":"[^"\\]*",', at)
  if e then at = e + 1 end
  local jid, class, queue
  _, e, jid, class, queue = string.find(job,
    '^"jid":"([^"\\]*)","class":"([^"\\]*)","queue":"([^"\\]*)",', at)
  if not e or through_client[class] then return nil end
  at = e + 1
  local stamped
  local vs, ve = string.find(job, '^"enqueued_at":[-+.%deE]+,', at)
  if vs then
    stamped = string.sub(job, 1, at + 13) .. stamp .. string.sub(job, ve)
  elseif string.find(job, '"enqueued_at":', at, true) then
    -- Written by someone else, further on: leave it to the client.
    return nil
  else
    stamped = string.sub(job, 1, at - 1) .. '"enqueued_at":' .. stamp .. ','
      .. string.sub(job, at)
  end
  if #stamped > max then return nil end
  return stamped, queue, class, jid
end

local moved, taken, held, names = {}, {}, {}, {}
-- Each queue's jobs, in due order, pushed together after the loop.
local pushes, order = {}, {}
for i = 1, #due, 2 do
  local stamped, queue, class, jid = direct(due[i])
  if stamped then
    local batch = pushes[queue]
    if batch == nil then
      batch = {}
      pushes[queue] = batch
      order[#order + 1] = queue
    end
    batch[#batch + 1] = stamped
    moved[#moved + 1] = due[i + 1]
    if named then
      names[#names + 1] = jid
      names[#names + 1] = class
      names[#names + 1] = queue
    end
  else
    held[#held + 1] = due[i]
    taken[#taken + 1] = due[i]
    taken[#taken + 1] = due[i + 1]
  end
end

-- At most 500 values a push, in their order (unpack's stack is limited).
local function push(key, jobs)
  for first = 1, #jobs, 500 do
    redis.call('LPUSH', key, unpack(jobs, first, math.min(first + 499, #jobs)))
  end
end
push(KEYS[2], held)
if #held > 0 then redis.call('SADD', KEYS[4], ARGV[8]) end
for _, queue in ipairs(order) do
  push(ARGV[5] .. 'queue:' .. queue, pushes[queue])
  redis.call('SADD', KEYS[3], queue)
end
if #order > 0 then redis.call('PUBLISH', ARGV[6], 'queued') end
return {moved, taken, names}
