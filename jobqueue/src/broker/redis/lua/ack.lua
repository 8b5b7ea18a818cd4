-- Acknowledges jobs that hold concurrency slots: removes each from the in-flight list
-- KEYS[1] of process ARGV[2] and, if it was still there, frees its slots (namespace
-- ARGV[1]). Then per job: its payload as fetched, and its slots' keys ("key ...").
-- Lighter than the settle script, whose generality costs Redis per job.
local ns, process = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then release(ns, process, ARGV[i + 1]) end
end
return 0
