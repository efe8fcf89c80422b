-- Reference: the plain sorted-set sliding window (ZREMRANGEBYSCORE, ZCARD, ZADD, PEXPIRE) with
-- server time, unit cost, no retry time. ARGV: limit, window_ms.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window * 1000))
if redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
local s = string.format('%d', now)
redis.call('ZADD', KEYS[1], s, s)
redis.call('PEXPIRE', KEYS[1], window)
return 1
