-- KEYS[1] the pause key, KEYS[2..] one sorted set per budget (members "uuid:cost").
-- ARGV: now, window seconds, member id, the longest pause in ms, then per budget: limit, cost,
-- weighted (1: sum the costs, 0: every member costs 1, so ZCARD is enough). Returns '0' when the
-- slots were taken, else the seconds until they could be.
local now, window, member, max_pause = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then
  -- a pause set before the cap existed (or by a worker with a larger cap) is cut down to ours
  if paused > max_pause then
    redis.call('PEXPIRE', KEYS[1], max_pause)
    paused = max_pause
  end
  return tostring(paused / 1000)
end
local wait = 0
for i = 2, #KEYS do
  local limit, cost, weighted = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), ARGV[3 * i + 1] == '1'
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local used = 0
  local entries = nil
  if weighted then
    entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do used = used + tonumber(string.match(entries[j], ':(%d+)$')) end
  else
    used = redis.call('ZCARD', KEYS[i])
  end
  if used + cost > limit then
    local need = used + cost - limit
    entries = entries or redis.call('ZRANGE', KEYS[i], 0, need - 1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      need = need - (weighted and tonumber(string.match(entries[j], ':(%d+)$')) or 1)
      if need <= 0 then
        wait = math.max(wait, tonumber(entries[j + 1]) + window - now)
        break
      end
    end
  end
end
if wait > 0 then return tostring(wait) end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, member .. ':' .. ARGV[3 * i])
  redis.call('EXPIRE', KEYS[i], math.ceil(window) + 1)
end
return '0'
