-- KEYS a lease; ARGV its owner, ttl ms. Renew only a lease this owner still holds: one that
-- expired and was taken over must not be extended by its former owner.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
