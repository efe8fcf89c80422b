--- @name cache.bump
--- @summary Invalidate a whole segment in O(1): move its version past every version used before.
--- @key 1 version cache:{<segment>}:version the segment's version; never expires
--- @returns integer the new version
--- @errors BADARG, CORRUPT
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 0 then
  return redis.error_reply('BADARG argc: expected 0 (got ' .. #ARGV .. ')')
end
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' then
  return current
end
current = current or '0'
if not string.find(current, '^%d+$') or #current > 16 then
  return redis.error_reply('CORRUPT version is not an integer')
end
-- Server microseconds, not a plain INCR: if the version key is ever lost (eviction, FLUSHDB of a
-- cache instance), the next bump still lands above every version an old entry may carry.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = math.max(tonumber(current) + 1, now)
redis.call('SET', KEYS[1], string.format('%d', new))
return new
