-- Collapse markers: prepended to the fetch scripts. A collapsible job's payload starts with
-- `"collapse":"KEY"`, the key of the marker holding the newest such job's id, so the
-- fetch reads it beside the job and the worker need not ask for it. `locks` is the lock
-- keys' prefix; a process running no collapsible class passes none, and its fetch returns
-- no such value. Returns false when the payload names no marker, '' when the marker has
-- expired, or the newest jid.
local function newest(locks, job)
  local _, mark = string.find(job, '"collapse":"', 1, true)
  if not mark then return false end
  local close = string.find(job, '"', mark + 1, true)
  if not close then return false end
  return redis.call('GET', locks .. string.sub(job, mark + 1, close - 1)) or ''
end
