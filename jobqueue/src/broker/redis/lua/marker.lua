-- Collapse markers: prepended to the fetch scripts. A collapsible job's payload starts with
-- `"collapse":"KEY"`, the key of the marker holding the newest such job's id, so the
-- fetch reads it beside the job and the worker need not ask for it. `locks` is the lock
-- keys' prefix; a process running no collapsible class passes none, and its fetch returns
-- no such value. Returns, for each of `jobs`, false when its payload names no marker, ''
-- when the marker has expired, or the newest jid. The markers are read with one MGET per
-- 500 (a `redis.call` costs about as much as the GET it makes).
local function newest(locks, jobs)
  local markers, keys, at = {}, {}, {}
  for k, job in ipairs(jobs) do
    markers[k] = false
    local _, mark = string.find(job, '"collapse":"', 1, true)
    local close = mark and string.find(job, '"', mark + 1, true)
    if close then
      keys[#keys + 1] = locks .. string.sub(job, mark + 1, close - 1)
      at[#keys] = k
    end
  end
  for from = 1, #keys, 500 do
    local values = redis.call('MGET', unpack(keys, from, math.min(from + 499, #keys)))
    for i = 1, #values do markers[at[from + i - 1]] = values[i] or '' end
  end
  return markers
end
