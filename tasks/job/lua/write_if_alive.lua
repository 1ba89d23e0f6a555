-- KEYS the job's spec, then optionally the keys whose existence closes the job (its cancel and
-- finalize flags); ARGV the job's TTL, then a list of commands, each as its length followed by
-- its words. Runs them only while the job exists. The job's hashes exist from its create with its
-- TTL (job/model.py); a list that an RPUSH here creates gets the TTL now. 0 when the job is gone
-- (nothing written), 1 when written, 2 when written and the job is closed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local result = redis.call(unpack(ARGV, i + 1, i + n))
  if ARGV[i + 1] == 'RPUSH' and result == n - 2 then redis.call('EXPIRE', ARGV[i + 2], ARGV[1]) end
  i = i + n + 1
end
if #KEYS > 1 and redis.call('EXISTS', unpack(KEYS, 2)) > 0 then return 2 end
return 1
