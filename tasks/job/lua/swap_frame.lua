-- KEYS the job's frames hash, its views hash, then optionally the keys whose existence closes the
-- job (its cancel and finalize flags); ARGV the field the record was read from, the record as
-- read, the field to write, the new record, the frame's draft field, the new record's view. A
-- compare-and-set: written only if the record read is still the frame's current record
-- (unchanged, and, when it is the finished record, no draft record was put beside it meanwhile:
-- that one is now the frame's), and, with the closing keys, only while the job is open. The view
-- goes to the same field of the views hash, where the job has one (a job without one has its views
-- made from its records: frames.py). Then ARGV's other commands, each as its length followed by
-- its words, run with the write (what the transition records beside the frame). 1 when written,
-- 0 when the record moved on meanwhile (the caller reads it again), -1 when the job is closed.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[1] ~= ARGV[5] and redis.call('HEXISTS', KEYS[1], ARGV[5]) == 1 then return 0 end
if #KEYS > 2 and redis.call('EXISTS', unpack(KEYS, 3)) > 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], ARGV[3], ARGV[6]) end
local i = 7
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
