-- KEYS the job's spec, then the keys whose existence closes the job (its cancel and finalize
-- flags; ARGV[2] says how many, 0 or 2), then optionally a step's lease and the fleet's lease index.
-- ARGV the job's TTL, that count, the lease's owner ('' for none), then a list of commands, each as
-- its length followed by its words. Runs them only while the job exists. The job's hashes exist
-- from its create with its TTL (job/model.py); a list that an RPUSH here creates gets the TTL now.
-- A write that stores a step's outcome releases the step's lease with it, if the owner still
-- holds it (release_lease.lua, finished). 0 when the job is gone (nothing written), 1 when
-- written, 2 when written and the job is closed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local closing = tonumber(ARGV[2])
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local result = redis.call(unpack(ARGV, i + 1, i + n))
  if ARGV[i + 1] == 'RPUSH' and result == n - 2 then redis.call('EXPIRE', ARGV[i + 2], ARGV[1]) end
  i = i + n + 1
end
if ARGV[3] ~= '' then
  local lease = KEYS[2 + closing]
  if redis.call('GET', lease) == ARGV[3] then
    redis.call('DEL', lease)
    redis.call('ZREM', KEYS[3 + closing], lease)
  end
end
if closing > 0 and redis.call('EXISTS', unpack(KEYS, 2, 1 + closing)) > 0 then return 2 end
return 1
