-- KEYS a step's lease, the fleet's lease index; ARGV owner, ttl ms, new deadline (epoch ms). Renew
-- only a lease this owner still holds: one that expired and was taken over is not extended.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], KEYS[1])
return 1
