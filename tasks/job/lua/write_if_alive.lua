-- KEYS the job's spec; ARGV a list of commands, each as its length followed by its words. Runs
-- them only while the job exists.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
