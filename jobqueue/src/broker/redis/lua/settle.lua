-- Moves jobs out of the in-flight list KEYS[1], each only if it is still there (a process
-- that recovered it first has already put it back). KEYS[2] is the `queues` set, and
-- KEYS[2 + i] the destination of move i: a queue list or a sorted set. A job that leaves
-- frees its concurrency slots (see limits.lua).
--   ARGV[1] dead: drop scores below   ARGV[2] dead: keep this many   ARGV[3] wake channel
--   ARGV[4] the namespace of the limits' keys
--   then five per move: the payload as fetched; op (lpush | rpush | zadd | dead | discard);
--   the payload to store; the target: the queue name (lpush, rpush) or the score (zadd,
--   dead); the concurrency slots it frees ("slot-id key ...", or empty).
-- A move whose op is then_lpush or then_zadd is a follow-up job of the move before it: it
-- removes nothing, and pushes only if that move's job was still there.
-- Returns one 1 (moved) or 0 (no longer there) per move.
local moved = {}
local queued, scheduled = false, false
local previous = 0
-- Pushes onto lists are gathered per list and operation and made after the loop, one call
-- per list (LPUSH and RPUSH onto one list commute, and each keeps its own order); queue
-- names are added to the `queues` set once each.
local pushes, order, named = {}, {}, {}
local function push(op, dest, queue, stored)
  local at = op .. ' ' .. dest
  local batch = pushes[at]
  if batch == nil then
    batch = {op = op, dest = dest}
    pushes[at] = batch
    order[#order + 1] = batch
  end
  batch[#batch + 1] = stored
  if not named[queue] then
    named[queue] = true
    redis.call('SADD', KEYS[2], queue)
  end
  queued = true
end
for i = 1, #KEYS - 2 do
  local a = 4 + (i - 1) * 5
  local original, op, stored, target = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local slots = ARGV[a + 5]
  local dest = KEYS[2 + i]
  if op == 'then_lpush' or op == 'then_zadd' then
    moved[i] = previous
    if previous == 1 and op == 'then_lpush' then
      push('lpush', dest, target, stored)
    elseif previous == 1 then
      redis.call('ZADD', dest, target, stored)
      scheduled = true
    end
  elseif redis.call('LREM', KEYS[1], -1, original) == 0 then
    moved[i] = 0
    previous = 0
  else
    moved[i] = 1
    previous = 1
    if slots ~= '' then release(ARGV[4], slots) end
    if op == 'lpush' or op == 'rpush' then
      push(op, dest, target, stored)
    elseif op == 'zadd' then
      redis.call('ZADD', dest, target, stored)
      scheduled = true
    elseif op == 'dead' then
      redis.call('ZADD', dest, target, stored)
      redis.call('ZREMRANGEBYSCORE', dest, '-inf', ARGV[1])
      redis.call('ZREMRANGEBYRANK', dest, 0, -(tonumber(ARGV[2]) + 1))
    end
  end
end
for _, batch in ipairs(order) do
  -- At most 500 values a call (unpack's stack is limited).
  for first = 1, #batch, 500 do
    redis.call(batch.op, batch.dest, unpack(batch, first, math.min(first + 499, #batch)))
  end
end
if queued then redis.call('PUBLISH', ARGV[3], 'queued') end
if scheduled then redis.call('PUBLISH', ARGV[3], 'scheduled') end
return moved
