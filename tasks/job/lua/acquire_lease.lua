-- KEYS lease, running, the job's spec; ARGV owner, step, ttl ms, job ttl s. Only while the job
-- exists: a step that outlived its job (expired, or Redis wiped under it) recreates none of its keys.
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
