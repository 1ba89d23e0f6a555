-- KEYS status, history, active set, the counts of jobs by state, the fleet metrics, the events
-- channel. ARGV: the job
-- states this write may start from (a comma list, '' for any: job/states.py JOB_TRANSITIONS),
-- progress ('1': a step's report), the history line, the active list ('add', 'rem' or ''), job
-- id, ttl, a counter field to add one to ('' for none) with the share of the progress bar that
-- counter fills and its total, the number N of metric increments applied when the job enters a
-- new state, N field/amount pairs, then the status fields as name/value pairs.
-- Nothing is written for a job that is gone, or in a state the write may not start from. A
-- counter's share sets the percent (count / total of it). A progress report's percent never
-- lowers the stored one (enhancements of later frames report after the first frame's generation
-- started). A change of state moves the job between the counts by state (queued and running are
-- counted) and applies the increments, so each happens once however often the write is
-- repeated. The event is published here, so subscribers see changes in the order they were
-- written (a percent that never lowers in the hash never lowers on the channel either); its JSON
-- is JobEvent's (job/records.py). Returns whether anything was written.
local INCREMENTS = 10
local EVENT = {'state', 'stage', 'message', 'percent', 'current_frame', 'revision'}
local current = redis.call('HMGET', KEYS[1], unpack(EVENT))
local before = current[1]
if not before then return false end
if ARGV[1] ~= '' and not string.find(',' .. ARGV[1] .. ',', ',' .. before .. ',', 1, true) then
  return false
end
local first_field = INCREMENTS + 1 + 2 * tonumber(ARGV[INCREMENTS])
local fields = {unpack(ARGV, first_field)}
local after = before
for i = 1, #fields, 2 do
  if fields[i] == 'state' then after = fields[i + 1] end
end
if ARGV[7] ~= '' then
  local count = redis.call('HINCRBY', KEYS[1], ARGV[7], 1)
  local total = tonumber(ARGV[9])
  local percent = tonumber(ARGV[8]) * math.min(count, total) / total
  fields[#fields + 1] = 'percent'
  fields[#fields + 1] = tostring(math.floor(percent * 10 + 0.5) / 10)
end
if ARGV[2] == '1' then
  local stored = tonumber(current[4] or '0') or 0
  for i = 1, #fields, 2 do
    if fields[i] == 'percent' and tonumber(fields[i + 1]) < stored then fields[i + 1] = tostring(stored) end
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
if after ~= before then
  if before == 'queued' or before == 'running' then redis.call('HINCRBY', KEYS[4], before, -1) end
  if after == 'queued' or after == 'running' then redis.call('HINCRBY', KEYS[4], after, 1) end
  for i = INCREMENTS + 1, first_field - 1, 2 do redis.call('HINCRBYFLOAT', KEYS[5], ARGV[i], ARGV[i + 1]) end
end
if ARGV[3] ~= '' and redis.call('RPUSH', KEYS[2], ARGV[3]) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
if ARGV[4] == 'add' then redis.call('SADD', KEYS[3], ARGV[5]) end
if ARGV[4] == 'rem' then redis.call('SREM', KEYS[3], ARGV[5]) end
local event = {}
for i, name in ipairs(EVENT) do event[name] = current[i] end
for i = 1, #fields, 2 do
  if event[fields[i]] ~= nil then event[fields[i]] = fields[i + 1] end
end
local state, stage, message, percent, frame, revision = event.state, event.stage, event.message, event.percent,
  event.current_frame, event.revision
local number = string.format('%.15g', tonumber(percent) or 0)
if not string.find(number, '[.eEn]') then number = number .. '.0' end
local frame_json = 'null'
if frame and frame ~= '' then frame_json = cjson.encode(frame) end
redis.call('PUBLISH', KEYS[6], '{"state":' .. cjson.encode((state ~= '' and state) or 'queued')
  .. ',"stage":' .. cjson.encode(stage or '') .. ',"message":' .. cjson.encode(message or '')
  .. ',"percent":' .. number .. ',"frame":' .. frame_json
  .. ',"revision":' .. string.format('%d', tonumber(revision) or 0) .. '}')
return true
