-- KEYS a lease; ARGV its owner. Give it up only while this owner still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
