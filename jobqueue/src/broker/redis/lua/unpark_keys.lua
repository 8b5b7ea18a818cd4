-- Brings back one job set aside under each key ARGV[2..] (namespace ARGV[1]): acknowledged
-- jobs freed a slot of each. Returns how many came back. KEYS[1] is the index of limit keys,
-- named so that a cluster sends the call to the node holding the namespace.
local moved = 0
for i = 2, #ARGV do moved = moved + unpark(ARGV[1], ARGV[i], 1) end
return moved
