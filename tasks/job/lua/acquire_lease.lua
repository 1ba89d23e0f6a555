-- KEYS a step's lease, the fleet's lease index, then any keys whose existence closes the job to
-- this step (its cancel and finalize flags). ARGV owner, ttl ms, deadline (epoch ms), then
-- optionally a read command's words (where the step's outcome is stored). Take the lease if
-- nobody holds it, and index it by when it runs out: the watchdog looks only at leases past their
-- deadline (take_dead_leases.lua). {1, the read's reply} when taken (the read runs after the
-- taking, so a copy that finished before sees its outcome), {0} when another copy holds it, {-1}
-- when the job is closed; the read's error, and no lease, when the read fails.
if #KEYS > 2 and redis.call('EXISTS', unpack(KEYS, 3)) > 0 then return {-1} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
if #ARGV > 3 then
  local reply = redis.pcall(unpack(ARGV, 4))
  if type(reply) == 'table' and reply['err'] then  -- the read failed: no lease is left behind
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], KEYS[1])
    return reply
  end
  return {1, reply}
end
return {1}
