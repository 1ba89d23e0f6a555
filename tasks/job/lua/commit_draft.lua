-- KEYS the job's frames hash, the running revision's task ids; ARGV the draft fields' prefix,
-- 'commit' or 'drop'. The running revision ends: its draft records become the frames (commit) or
-- go (drop), all at once (nobody reads half a revision), and its task ids go (a cancel of the next
-- revision revokes only that one's tasks). Returns the frames the draft held.
redis.call('DEL', KEYS[2])
local fields = redis.call('HKEYS', KEYS[1])
local changed = {}
local prefix = ARGV[1]
for _, field in ipairs(fields) do
  if string.sub(field, 1, #prefix) == prefix then
    local name = string.sub(field, #prefix + 1)
    if ARGV[2] == 'commit' then
      redis.call('HSET', KEYS[1], name, redis.call('HGET', KEYS[1], field))
    end
    redis.call('HDEL', KEYS[1], field)
    table.insert(changed, name)
  end
end
return changed
