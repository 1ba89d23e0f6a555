-- KEYS the job's frames hash; ARGV the field the record was read from, the record as read, the
-- field to write, the new record. A compare-and-set: written only if the record read is still
-- there and, when it moves into the draft, no other step put a draft record there first.
-- 1 when written, 0 when the record moved on meanwhile (the caller reads it again).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= ARGV[1] and redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
