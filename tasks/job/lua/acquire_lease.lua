-- KEYS a step's lease, the fleet's lease index, then any keys whose existence closes the job to
-- this step (its cancel and finalize flags). ARGV owner, ttl ms, deadline (epoch ms), then
-- optionally a read command's words (where the step's outcome is stored). Take the lease if
-- nobody holds it, and index it by when it runs out: the watchdog looks only at leases past their
-- deadline (take_dead_leases.lua). {1, the read's reply} when taken (the read runs after the
-- taking, so a copy that finished before sees its outcome), {0} when another copy holds it, {-1}
-- when the job is closed.
if #KEYS > 2 and redis.call('EXISTS', unpack(KEYS, 3)) > 0 then return {-1} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
if #ARGV > 3 then return {1, redis.call(unpack(ARGV, 4))} end
return {1}
