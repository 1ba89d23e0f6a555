-- KEYS the job's spec, then the keys whose existence closes the job (its cancel and finalize
-- flags; ARGV[2] says how many, 0 or 2), then optionally a step's lease and the fleet's lease index.
-- ARGV the job's TTL, that count, the lease's owner ('' for none), how many of the commands that
-- follow are reads (the last ones), then the commands, each as its length followed by its words.
-- Runs them only while the job exists. The job's hashes exist from its create with its TTL
-- (job/model.py); a list that an RPUSH here creates gets the TTL now. A write that stores a step's
-- outcome releases the step's lease with it, if the owner still holds it (release_lease.lua,
-- finished), and may read what its caller reads next (after the writes and the release).
-- 0 when the job is gone (nothing written), 1 when written, 2 when written and the job is closed;
-- with reads, {that, each read's reply}.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local closing = tonumber(ARGV[2])
local commands = {}
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  commands[#commands + 1] = {i + 1, i + n}
  i = i + n + 1
end
local writes = #commands - tonumber(ARGV[4])
for c = 1, writes do
  local first, last = commands[c][1], commands[c][2]
  local result = redis.call(unpack(ARGV, first, last))
  if ARGV[first] == 'RPUSH' and result == last - first - 1 then redis.call('EXPIRE', ARGV[first + 1], ARGV[1]) end
end
if ARGV[3] ~= '' then
  local lease = KEYS[2 + closing]
  if redis.call('GET', lease) == ARGV[3] then
    redis.call('DEL', lease)
    redis.call('ZREM', KEYS[3 + closing], lease)
  end
end
local status = 1
if closing > 0 and redis.call('EXISTS', unpack(KEYS, 2, 1 + closing)) > 0 then status = 2 end
if writes == #commands then return status end
local replies = {status}
for c = writes + 1, #commands do
  replies[#replies + 1] = redis.call(unpack(ARGV, commands[c][1], commands[c][2]))
end
return replies
