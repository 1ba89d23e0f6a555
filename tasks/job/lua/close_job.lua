-- KEYS the job's closing flag (cancelled or finalized), its round counter, the prefix of its
-- wake-up lists. ARGV the flag's value, the job's TTL, how many tokens, the wake-up list's TTL.
-- Sets the flag. No next round comes once the job is closed, so the slot holds waiting for one
-- (count_round.lua's list for the round after the last one counted) get a 'closed' token each and
-- end now instead of at their bound.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local list = KEYS[3] .. ((tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + 1)
local tokens = {}
for i = 1, tonumber(ARGV[3]) do tokens[i] = 'closed' end
redis.call('RPUSH', list, unpack(tokens))
redis.call('EXPIRE', list, ARGV[4])
return #tokens
