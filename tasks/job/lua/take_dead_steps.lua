-- KEYS running, redrives; ARGV lease key prefix. Atomically take every running step whose lease is
-- gone off the running list and count its re-drive: a re-sent copy that waits in a queue, or finds
-- the result stored, is not re-driven again; the copy that runs lists itself when it takes the lease.
local dead = {}
for _, step in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. step) == 0 then
    redis.call('HDEL', KEYS[1], step)
    table.insert(dead, step)
    table.insert(dead, redis.call('HINCRBY', KEYS[2], step, 1))
  end
end
return dead
