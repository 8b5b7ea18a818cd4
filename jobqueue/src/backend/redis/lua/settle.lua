-- Moves jobs out of KEYS[1], each only if it is still there (a process that recovered it
-- first has already put it back): an in-flight list (ARGV[2] 'list'), whose jobs free
-- their concurrency slots as they leave (limits.lua), or a sorted set (ARGV[2] 'zset'), an
-- operator's move of an entry.
--   ARGV[1] the namespace   ARGV[3] now (the dead set's score)
--   ARGV[4] dead: drop scores below   ARGV[5] dead: keep this many
--   then seven per move: the payload as fetched or stored; op (lpush | rpush | schedule |
--   retry | dead | discard); the payload to store; the target (the queue's name for
--   lpush and rpush, the score for schedule and retry); the concurrency slots it frees
--   ("slot-id key ...", or empty); a lock's key and its owner, released if the owner still
--   holds it (empty for none).
-- A move whose op is then_lpush or then_schedule is a follow-up job of the move before it:
-- it removes nothing, and is pushed only if that move's job was still there.
-- Returns one 1 (moved) or 0 (no longer there) per move.
local ns, from_list, now = ARGV[1], ARGV[2] == 'list', ARGV[3]
local moved = {}
local queued, scheduled = false, false
local previous = 0
-- Pushes onto queues are gathered per queue and end, and made after the loop, one call
-- each (pushes at either end of one list commute, and each end keeps its own order).
local pushes, order = {}, {}
local function push(queue, stored, front)
  local at = (front and 'r ' or 'l ') .. queue
  local batch = pushes[at]
  if batch == nil then
    batch = {queue = queue, front = front}
    pushes[at] = batch
    order[#order + 1] = batch
  end
  batch[#batch + 1] = stored
  queued = true
end
local function place(op, stored, target)
  if op == 'lpush' or op == 'rpush' then
    push(target, stored, op == 'rpush')
  elseif op == 'schedule' or op == 'retry' then
    redis.call('ZADD', ns .. op, target, stored)
    scheduled = true
  elseif op == 'dead' then
    bury(ns .. 'dead', stored, now, ARGV[4], ARGV[5])
  end
end
for i = 6, #ARGV, 7 do
  local original, op, stored, target = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local slots, lock, owner = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  if op == 'then_lpush' or op == 'then_schedule' then
    moved[#moved + 1] = previous
    if previous == 1 then place(op == 'then_lpush' and 'lpush' or 'schedule', stored, target) end
  else
    local removed
    if from_list then
      removed = redis.call('LREM', KEYS[1], -1, original)
    else
      removed = redis.call('ZREM', KEYS[1], original)
    end
    previous = removed > 0 and 1 or 0
    moved[#moved + 1] = previous
    if previous == 1 then
      if slots ~= '' then release(ns, slots) end
      place(op, stored, target)
    end
  end
  if lock ~= '' and redis.call('GET', lock) == owner then redis.call('DEL', lock) end
end
for _, batch in ipairs(order) do push_queue(ns, batch.queue, batch, batch.front) end
if queued then wake(ns, 'queued') end
if scheduled then wake(ns, 'scheduled') end
return moved
