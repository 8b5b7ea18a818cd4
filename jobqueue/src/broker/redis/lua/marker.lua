-- Collapse markers: prepended to the fetch scripts. A collapsible job's payload starts with
-- `"collapse":"KEY"`, the key of the marker holding the newest such job's id, so the
-- fetch reads it beside the job and the worker need not ask for it. `locks` is the lock
-- keys' prefix, or empty when the process runs no collapsible class (nothing is read).
-- Returns false when nothing was read, '' when the marker has expired, or the newest jid.
local function newest(locks, job)
  if locks == '' then return false end
  local _, mark = string.find(job, '"collapse":"', 1, true)
  if not mark then return false end
  local close = string.find(job, '"', mark + 1, true)
  if not close then return false end
  return redis.call('GET', locks .. string.sub(job, mark + 1, close - 1)) or ''
end
