-- KEYS the job's round counter, the prefix of its wake-up lists, then optionally a step's lease and
-- the fleet's lease index. ARGV the job's TTL, how many variations to wake, the wake-up list's TTL,
-- the lease's owner ('' for none). Counts one more round enqueued and pushes a token per held slot
-- onto that round's wake-up list. The step that enqueued the round is done with it: its lease is
-- released as finished, if the owner still holds it (release_lease.lua).
local rounds = redis.call('INCR', KEYS[1])
if rounds == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local wake = tonumber(ARGV[2])
if wake > 0 then
  local list = KEYS[2] .. rounds
  local tokens = {}
  for i = 1, wake do tokens[i] = '1' end
  redis.call('RPUSH', list, unpack(tokens))
  redis.call('EXPIRE', list, ARGV[3])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], KEYS[3])
end
return rounds
