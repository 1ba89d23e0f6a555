-- KEYS: the list served first, then the lists a round may wait in, the last served first.
-- ARGV: the round's group id, window. kombu pushes on the left and pops on the right: pushed to
-- the right end newest first, the round keeps its order there (and, taken from the lists the last
-- served first, so do messages from several lists).
local moved = 0
for k = 2, #KEYS do
  local entries = redis.call('LRANGE', KEYS[k], -tonumber(ARGV[2]), -1)
  for i = 1, #entries do
    -- decoded only where the group id appears at all: decoding every message costs Redis far more
    if string.find(entries[i], ARGV[1], 1, true) then
      local ok, message = pcall(cjson.decode, entries[i])
      if ok and type(message) == 'table' and type(message.headers) == 'table'
          and message.headers.group == ARGV[1]
          and redis.call('LREM', KEYS[k], -1, entries[i]) == 1 then
        redis.call('RPUSH', KEYS[1], entries[i])
        moved = moved + 1
      end
    end
  end
end
return moved
