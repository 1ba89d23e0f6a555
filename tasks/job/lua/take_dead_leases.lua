-- KEYS the fleet's lease index; ARGV now (epoch ms), at most how many. Take off the index the
-- leases past their deadline whose key is gone (their holder died, or raised): the steps to
-- re-drive. Bounded by what it returns, however many jobs there are.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local dead = {}
for _, lease in ipairs(due) do
  if redis.call('EXISTS', lease) == 0 then
    redis.call('ZREM', KEYS[1], lease)
    table.insert(dead, lease)
  end
end
return dead
