-- Takes up to ARGV[3] jobs due by ARGV[2] out of the sorted set KEYS[1] (namespace ARGV[1]).
--
-- A job moves straight to its queue, stamped with `enqueued_at` ARGV[4], when ARGV[4] is
-- not empty and the job needs nothing from the client: its payload begins with the
-- header (fixed_header) and then its class, queue and `enqueued_at`, none of them escaped,
-- its class is one of ARGV[8..] (classes known to need no admission), and the stamped
-- payload is at most ARGV[5] bytes. Every other job goes into the in-flight list KEYS[2],
-- so that a crash before the process moves it on loses none.
-- ARGV[7] is the process, listed among the fetchers recovery looks at when it takes jobs
-- into its in-flight list.
-- Returns {{due time of each job moved}, {job, due time, job, due time, ...}, names}, where
-- names is {jid, class, queue, ...} of each job moved when ARGV[6] is '1' (for the
-- process's enqueue spans), and empty otherwise.
local ns = ARGV[1]
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, ARGV[3],
  'WITHSCORES')
local n = #due / 2
if n == 0 then return {{}, {}, {}} end
-- The jobs due are the set's first n by rank (scores from -inf), so one call removes them.
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)

local stamp, named = ARGV[4], ARGV[6] == '1'
local max = tonumber(ARGV[5])
local plain = {}
for i = 8, #ARGV do plain[ARGV[i]] = true end

-- The job stamped for its queue, with its queue, class and jid; nil when it must pass
-- through the client.
local function direct(job)
  if stamp == '' then return nil end
  local _, _, jid, at = fixed_header(job)
  if not jid then return nil end
  local _, e, class, queue = string.find(job, '^,"class":"([^"\\]*)","queue":"([^"\\]*)",', at)
  if not e or not plain[class] then return nil end
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

for first = 1, #held, 500 do
  redis.call('LPUSH', KEYS[2], unpack(held, first, math.min(first + 499, #held)))
end
if #held > 0 then redis.call('SADD', ns .. 'jobqueue:fetchers', ARGV[7]) end
for _, queue in ipairs(order) do push_queue(ns, queue, pushes[queue], false) end
if #order > 0 then wake(ns, 'queued') end
return {moved, taken, names}
