-- The scripts' library, prepended to every script: key names, the header and limits
-- readers, pushes onto queues, the dead set's trim. Keys live under the namespace `ns`
-- (empty, or `NAME:`): Sidekiq's `queues`, `queue:NAME`, `schedule`, `retry`, `dead`, and
-- ours under `jobqueue:` (keys.rs names the same keys for the Rust side).

local function queue_key(ns, queue) return ns .. 'queue:' .. queue end
local function slots_key(ns, key) return ns .. 'jobqueue:limit:' .. key end
local function parked_key(ns, key) return ns .. 'jobqueue:parked:' .. key end
local function limits_key(ns) return ns .. 'jobqueue:limits' end
local function wake(ns, what) redis.call('PUBLISH', ns .. 'jobqueue:wake', what) end

-- Pushes `jobs` onto `queue`, listing it in `queues`: at the back of the line (LPUSH) or,
-- with `front`, at its front (RPUSH), in their order; at most 500 values a call, since
-- unpack's stack is bounded.
local function push_queue(ns, queue, jobs, front)
  if #jobs == 0 then return end
  redis.call('SADD', ns .. 'queues', queue)
  local key, op = queue_key(ns, queue), front and 'RPUSH' or 'LPUSH'
  for first = 1, #jobs, 500 do
    redis.call(op, key, unpack(jobs, first, math.min(first + 499, #jobs)))
  end
end

-- Adds `job` to the dead set `dead` at `score`, then drops the entries scored before
-- `before` and all but the newest `keep`.
local function bury(dead, job, score, before, keep)
  redis.call('ZADD', dead, score, job)
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', before)
  redis.call('ZREMRANGEBYRANK', dead, 0, -(tonumber(keep) + 1))
end

-- The header at its fixed place: the client writes `{"collapse":"K","limits":"L","jid":"J"`
-- first (the first two when the job has them). Returns collapse, limits, jid and the
-- position after the jid's closing quote; nil when the payload does not begin so.
local function fixed_header(job)
  if string.byte(job, 1) ~= 123 then return nil end -- 123: '{'
  local at, collapse, limits = 2
  local _, e, value = string.find(job, '^"collapse":"([^"\\]*)",', at)
  if e then collapse, at = value, e + 1 end
  _, e, value = string.find(job, '^"limits":"([^"\\]*)",', at)
  if e then limits, at = value, e + 1 end
  local jid
  _, e, jid = string.find(job, '^"jid":"([^"\\]*)"', at)
  if not e then return nil end
  return collapse, limits, jid, e + 1
end

-- A payload read as JSON as the workers read it, so that the scripts act on no field they
-- could not read: no control bytes but whitespace (cjson keeps them in strings and stops
-- at a NUL), and JSON's own numbers only (no NaN, Infinity or hex; the setting is the
-- server's, so it is put back). The object, or nil.
local function decode(job)
  if string.find(job, '[%z\1-\8\11\12\14-\31]') then return nil end
  local lenient = cjson.decode_invalid_numbers()
  cjson.decode_invalid_numbers(false)
  local ok, decoded = pcall(cjson.decode, job)
  cjson.decode_invalid_numbers(lenient)
  if ok and type(decoded) == 'table' then return decoded end
end

-- The header of any payload: at its fixed place, or else the top-level fields of the
-- payload read as JSON when its text names `limits` or `collapse` at all; never a
-- substring, which an argument could supply. Returns collapse, limits, jid (each nil when
-- absent or not a string).
local function header(job)
  local collapse, limits, jid = fixed_header(job)
  if jid then return collapse, limits, jid end
  if not (string.find(job, '"limits"', 1, true) or string.find(job, '"collapse"', 1, true)) then
    return nil
  end
  local decoded = decode(job)
  if not decoded then return nil end
  local function text(value) if type(value) == 'string' then return value end end
  return text(decoded.collapse), text(decoded.limits), text(decoded.jid)
end

-- The limits of a header's `text`, each {kind ('c' or 'r'), count, period, slots key,
-- key}: all of them, or nil and the reason when one is out of range. The rules of
-- LimitTag::parse: counts from 1 to 1,000,000; periods above 0 up to ten years, decimal;
-- at most 4 limits; keys of letters, digits and `_-.:@%,` up to 512 bytes, each named once.
local function parse_limits(ns, text)
  if string.find(text, '[^%w_%-%.:@%%,/ ]') then return nil, 'a byte is not allowed' end
  local words = {}
  for word in string.gmatch(text, '[^ ]+') do words[#words + 1] = word end
  if #words % 2 ~= 0 then return nil, 'a limit has no key' end
  if #words / 2 > 4 then return nil, 'more than 4 limits' end
  local limits, seen = {}, {}
  for i = 1, #words, 2 do
    local spec, key = words[i], words[i + 1]
    if #key > 512 or string.find(key, '/', 1, true) then
      return nil, 'a key is over 512 bytes or holds /'
    end
    if seen[key] then return nil, 'a key is named by two limits' end
    seen[key] = true
    local kind, n, per = string.sub(spec, 1, 1), nil, 0
    if kind == 'c' then
      n = string.match(spec, '^c(%d+)$')
    elseif kind == 'r' then
      local period
      n, period = string.match(spec, '^r(%d+)/(%d+%.?%d*)$')
      per = tonumber(period)
    end
    n = tonumber(n)
    if not n or n < 1 or n > 1000000 then return nil, 'a count is out of range' end
    if kind == 'r' and (not per or per <= 0 or per > 316224000) then
      return nil, 'a period is out of range'
    end
    limits[#limits + 1] = {kind, n, per, slots_key(ns, key), key}
  end
  return limits
end
