-- Decides, exactly, on jobs a fetch has moved into the in-flight list KEYS[1] of process
-- ARGV[2] and that found a key full when they took their slots with plain commands
-- (namespace ARGV[1]; those commands wrote the start time ARGV[3]; a full concurrency key is
-- looked at again after ARGV[4] seconds). Then per job: its payload, its slot id, its number
-- of limits, and per limit its kind ('c' or 'r'), limit, period and key. Each job gives back
-- what it took, then takes a slot in each of its limits, or is set aside out of the
-- in-flight list. Returns one 1 (admitted) or 0 (set aside) per job.
local ns, process, now, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local prefix = ns .. 'jobqueue:limit:'
local verdicts, refused = {}, {}
local i = 5
while i <= #ARGV do
  local job, id, first, count = ARGV[i], ARGV[i + 1], i + 3, tonumber(ARGV[i + 2])
  local last = first + (count - 1) * 4
  for j = first, last, 4 do
    if ARGV[j] == 'r' then
      redis.call('LREM', prefix .. ARGV[j + 3], -1, ARGV[3])
    else
      redis.call('HDEL', prefix .. ARGV[j + 3], id)
    end
  end
  local full, at
  for j = first, last, 4 do
    local free, when = room(ns, ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]),
      prefix .. ARGV[j + 3], now, lease)
    if free <= 0 then
      full, at = ARGV[j + 3], when
      break
    end
  end
  if full then
    park(ns, full, job, at)
    refused[#refused + 1] = job
    verdicts[#verdicts + 1] = 0
  else
    for j = first, last, 4 do
      take(ARGV[j], tonumber(ARGV[j + 2]), prefix .. ARGV[j + 3], id, process, ARGV[3])
    end
    verdicts[#verdicts + 1] = 1
  end
  i = last + 4
end
-- Out of the in-flight list, the last fetched first: each is then near the list's head.
for r = #refused, 1, -1 do
  redis.call('LREM', KEYS[1], 1, refused[r])
end
-- The schedulers look at set-aside jobs again when their keys have room.
if #refused > 0 then redis.call('PUBLISH', ns .. 'jobqueue:wake', 'scheduled') end
return verdicts
