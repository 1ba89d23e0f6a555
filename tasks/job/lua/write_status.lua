-- KEYS status, history, active set, the counts of jobs by state, the fleet metrics. ARGV: the job
-- states this write may start from (a comma list, '' for any: job/states.py JOB_TRANSITIONS),
-- progress ('1': a step's report), the history line, the active list ('add', 'rem' or ''), job
-- id, ttl, the number N of metric increments applied when the job enters a new state, N
-- field/amount pairs, then the status fields as name/value pairs.
-- Nothing is written for a job that is gone, or in a state the write may not start from. A
-- progress report's percent never lowers the stored one (enhancements of later frames report
-- after the first frame's generation started). A change of state moves the job between the
-- counts by state (queued and running are counted) and applies the increments, so each happens
-- once however often the write is repeated. Returns the event's fields, false when nothing was
-- written.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local before = redis.call('HGET', KEYS[1], 'state') or ''
if ARGV[1] ~= '' then
  if not string.find(',' .. ARGV[1] .. ',', ',' .. before .. ',', 1, true) then return false end
end
local first_field = 8 + 2 * tonumber(ARGV[7])
if ARGV[2] == '1' then
  for i = first_field, #ARGV, 2 do
    if ARGV[i] == 'percent' then
      local stored = tonumber(redis.call('HGET', KEYS[1], 'percent') or '0') or 0
      if tonumber(ARGV[i + 1]) < stored then ARGV[i + 1] = tostring(stored) end
    end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, first_field))
local after = redis.call('HGET', KEYS[1], 'state') or ''
if after ~= before then
  if before == 'queued' or before == 'running' then redis.call('HINCRBY', KEYS[4], before, -1) end
  if after == 'queued' or after == 'running' then redis.call('HINCRBY', KEYS[4], after, 1) end
  for i = 8, first_field - 1, 2 do redis.call('HINCRBYFLOAT', KEYS[5], ARGV[i], ARGV[i + 1]) end
end
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
if ARGV[4] == 'add' then redis.call('SADD', KEYS[3], ARGV[5]) end
if ARGV[4] == 'rem' then redis.call('SREM', KEYS[3], ARGV[5]) end
return redis.call('HMGET', KEYS[1], 'state', 'stage', 'message', 'percent', 'current_frame', 'revision')
