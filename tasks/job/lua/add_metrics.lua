-- KEYS the fleet metrics hash, the batch's marker; ARGV the marker's TTL, then field/amount pairs.
-- Adds one process's batch of counts once: a batch sent again (the client retries a command whose
-- reply was lost) finds its marker and adds nothing. A field that cannot be added to (not a
-- float) is skipped, the others are added. Returns the fields skipped.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return {} end
local skipped = {}
for i = 2, #ARGV, 2 do
  local reply = redis.pcall('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
  if type(reply) == 'table' and reply['err'] then
    skipped[#skipped + 1] = ARGV[i]
  end
end
return skipped
