-- KEYS lease, running, redrives; ARGV owner, step, finished. Only the owner releases: a former
-- holder whose lease expired and was taken over must not clear the new holder's entry.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return redis.call('DEL', KEYS[1])
