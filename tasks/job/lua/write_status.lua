-- KEYS status, history, active set; ARGV progress ('1'/'0'), history line, active op ('add',
-- 'rem', ''), job id, ttl, then field/value pairs. Nothing for a job that is gone. A progress report
-- is dropped once the job is done, and its ``percent`` never lowers the stored one (enhancements of
-- later frames report after the first frame's generation started). Returns the event's fields.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'state') == 'done' then return false end
  for i = 6, #ARGV, 2 do
    if ARGV[i] == 'percent' then
      local stored = tonumber(redis.call('HGET', KEYS[1], 'percent') or '0') or 0
      if tonumber(ARGV[i + 1]) < stored then ARGV[i + 1] = tostring(stored) end
    end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if ARGV[3] == 'add' then redis.call('SADD', KEYS[3], ARGV[4]) end
if ARGV[3] == 'rem' then redis.call('SREM', KEYS[3], ARGV[4]) end
return redis.call('HMGET', KEYS[1], 'state', 'stage', 'message', 'percent', 'current_frame', 'revision')
