-- KEYS a step's lease, the fleet's lease index; ARGV owner, finished ('1'/'0'), now (epoch ms).
-- Only the owner releases (a former holder whose lease was taken over must not clear the new
-- holder's). A finished step leaves the index; one that raised stays in it, due now, so the
-- watchdog re-drives it at its next round.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('ZADD', KEYS[2], 'XX', ARGV[3], KEYS[1])
end
return 1
