-- KEYS the job's frames hash; ARGV the draft fields' prefix, 'commit' or 'drop'. The running
-- revision's draft records become the frames (commit) or go (drop), all at once: nobody reads
-- half a revision. Returns the frames the draft held.
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
