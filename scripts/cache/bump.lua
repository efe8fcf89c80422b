--- @name cache.bump
--- @summary Invalidate a whole segment in O(1): move its version past every version used before.
--- @key 1 version cache:{<segment>}:version the segment's version; never expires: one small key per segment, and losing it would turn every entry of the segment into a miss (harmless: the next bump still lands above every earlier version)
--- @returns integer the new version (below 2^53)
--- @errors BADARG, CORRUPT (the version is not an integer 0..2^53-2)
--- @complexity O(1): 3 commands
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
if not string.find(current, '^%d+$') or #current > 16 or tonumber(current) >= 9007199254740991 then
  return redis.error_reply('CORRUPT version: not an integer 0..9007199254740990')
end
-- Server microseconds, not a plain INCR: if the version key is ever lost (eviction, FLUSHDB of a
-- cache instance), the next bump still lands above every version an old entry may carry.
-- Clock assumption: the server clock never steps back past a version already handed out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = math.max(tonumber(current) + 1, now)
redis.call('SET', KEYS[1], string.format('%d', new))
return new
