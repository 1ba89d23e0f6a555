-- KEYS the job's frames hash, the fleet metrics; ARGV the field the record was read from, the
-- record as read, the field to write, the new record, the number N of metric increments, then N
-- field/amount pairs. A compare-and-set: written only if the record read is still there and, when
-- it moves into the draft, no other step put a draft record there first; the increments are
-- applied with the write, so a transition is counted once.
-- 1 when written, 0 when the record moved on meanwhile (the caller reads it again).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= ARGV[1] and redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
for i = 6, 5 + 2 * tonumber(ARGV[5]), 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
