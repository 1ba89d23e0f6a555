-- KEYS a step's lease, the fleet's lease index, then any keys whose existence closes the job to
-- this step (its cancel and finalize flags). ARGV owner, ttl ms, deadline (epoch ms), then read
-- commands, each as its length followed by its words (where the step's outcome is stored, and what
-- its work reads first). Take the lease if nobody holds it, and index it by when it runs out: the
-- watchdog looks only at leases past their deadline (take_dead_leases.lua). {1, each read's reply}
-- when taken (the reads run after the taking, so a copy that finished before sees its outcome),
-- {0} when another copy holds it, {-1} when the job is closed; a read's error, and no lease, when a
-- read fails.
if #KEYS > 2 and redis.call('EXISTS', unpack(KEYS, 3)) > 0 then return {-1} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
local replies = {1}
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local reply = redis.pcall(unpack(ARGV, i + 1, i + n))
  if type(reply) == 'table' and reply['err'] then  -- a read failed: no lease is left behind
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], KEYS[1])
    return reply
  end
  replies[#replies + 1] = reply
  i = i + n + 1
end
return replies
