-- KEYS when the fleet's last stall sweep began (ms, Redis's clock); ARGV the caller's period (ms).
-- Claim the sweep when the last one began a period or more ago: one caller per period, each
-- judging by its own period (a fleet whose FRAMEFLEET_STALL_AFTER_S was lowered sweeps at once).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if now - last < tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], now)
return 1
