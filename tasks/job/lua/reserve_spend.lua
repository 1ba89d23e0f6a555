-- KEYS[1] committed spend; ARGV cap, amount, keep_free, ttl. Reserve amount if it fits under the
-- cap with keep_free left over; 1 when reserved.
local committed = tonumber(redis.call('GET', KEYS[1]) or '0')
if committed + tonumber(ARGV[2]) + tonumber(ARGV[3]) > tonumber(ARGV[1]) + 1e-9 then return 0 end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
