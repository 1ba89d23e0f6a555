-- Scripts run one after the other in one call, each on its own KEYS and ARGV: a write and what
-- depends on it (a frame's transition and the status it reports) cost one round trip, and the
-- second runs only if the first was made. ``chain`` in job/redis.py puts each script's source in
-- as a function below. ARGV starts with each script's key count and argument count; then come the
-- scripts' arguments in order (KEYS likewise). A script whose reply is false, nil, 0 or a negative
-- number refused its write: the scripts after it do not run. The replies of those that ran.
local STEPS = {
--STEPS--
}
local header = 2 * #STEPS
local key, arg = 1, header + 1
local replies = {}
for i, step in ipairs(STEPS) do
  local keys, args = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local reply = step({unpack(KEYS, key, key + keys - 1)}, {unpack(ARGV, arg, arg + args - 1)})
  replies[i] = reply
  if not reply or (type(reply) == 'number' and reply <= 0) then break end
  key, arg = key + keys, arg + args
end
return replies
