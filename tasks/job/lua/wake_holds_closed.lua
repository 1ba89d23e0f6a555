-- KEYS the job's round counter, the prefix of its wake-up lists. ARGV how many tokens, the wake-up
-- list's TTL. The job was cancelled or is finalizing, so no next round comes: the slot holds
-- waiting for it (count_round.lua's list for the round after the last one counted) get a 'closed'
-- token each and end now instead of at their bound.
local list = KEYS[2] .. ((tonumber(redis.call('GET', KEYS[1]) or '0') or 0) + 1)
local tokens = {}
for i = 1, tonumber(ARGV[1]) do tokens[i] = 'closed' end
redis.call('RPUSH', list, unpack(tokens))
redis.call('EXPIRE', list, ARGV[2])
return #tokens
