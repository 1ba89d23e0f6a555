-- KEYS the job's frames hash, the running revision's task ids, the frames' views hash; ARGV the
-- draft fields' prefix, 'commit' or 'drop'. The running revision ends: its draft records (and
-- their views) become the frames' (commit) or go (drop), all at once (nobody reads half a
-- revision), and its task ids go (a cancel of the next revision revokes only that one's tasks).
-- Returns the frames the draft held.
redis.call('DEL', KEYS[2])
local changed = {}
local prefix = ARGV[1]
for _, hash in ipairs({KEYS[1], KEYS[3]}) do
  for _, field in ipairs(redis.call('HKEYS', hash)) do
    if string.sub(field, 1, #prefix) == prefix then
      local name = string.sub(field, #prefix + 1)
      if ARGV[2] == 'commit' then
        redis.call('HSET', hash, name, redis.call('HGET', hash, field))
      end
      redis.call('HDEL', hash, field)
      if hash == KEYS[1] then table.insert(changed, name) end
    end
  end
end
return changed
