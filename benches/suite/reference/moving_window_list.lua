-- Reference: an exact moving-window log on a list, the algorithm of a popular Python limiter
-- (one entry per unit of cost, checked at index limit - cost). The client passes the timestamp
-- (seconds); no remaining count, no retry time. ARGV: now_s, limit, window_s, cost.
local now, limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if cost > limit then
  return 0
end
local entry = redis.call('LINDEX', KEYS[1], limit - cost)
if entry and tonumber(entry) >= now - window then
  return 0
end
local entries = {}
for i = 1, cost do
  entries[i] = now
end
redis.call('LPUSH', KEYS[1], unpack(entries))
redis.call('LTRIM', KEYS[1], 0, limit - 1)
redis.call('EXPIRE', KEYS[1], window)
return 1
