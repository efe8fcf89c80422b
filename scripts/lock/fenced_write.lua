--- @name lock.fenced_write
--- @summary Write the protected value unless a newer fencing token has already written to it.
--- @key 1 data lock:{<resource>}:data the protected value (a string); expires after ttl_ms, or never when ttl_ms is 0
--- @key 2 seen lock:{<resource>}:seen highest fencing token that wrote; rewritten on every write to expire together with data (never, when data never expires: it guards data for as long as data exists)
--- @arg 1 fence integer>=1 the writer's fencing token from lock.acquire (1..9007199254740991, at most 16 digits)
--- @arg 2 value bytes the new value (may be empty)
--- @arg 3 ttl_ms integer>=0 expiry of the value in milliseconds; 0 = no expiry (at most 15 digits)
--- @returns array {written 1|0, the writer's fence (written) or the highest fence seen (refused)}
--- @errors BADARG, CORRUPT (seen holds something other than an integer 0..2^53-1)
--- @complexity O(1): at most 6 commands
--- @mode write
--- @min-server 6.2

-- Equal tokens are accepted (the holder may write several times); tokens never repeat across
-- holders (see lock.acquire), so an equal token is always the same holder. seen lives exactly as
-- long as data: once both are gone there is no value left for a stale writer to overwrite.

if #KEYS ~= 2 then
  return redis.error_reply('BADARG keys: expected 2 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 3 then
  return redis.error_reply('BADARG argc: expected 3 (got ' .. #ARGV .. ')')
end
local fence_arg, value, ttl = ARGV[1], ARGV[2], ARGV[3]
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. No leading zeros, so equal
-- numbers are equal strings; below 2^53 every integer is exact as a Lua double.
if not string.find(fence_arg, '^[1-9]%d*$') or #fence_arg > 16 or tonumber(fence_arg) > 9007199254740991 then
  return redis.error_reply('BADARG fence: must be an integer 1..9007199254740991')
end
if ttl ~= '0' and not string.find(ttl, '^[1-9]%d*$') or #ttl > 15 then
  return redis.error_reply('BADARG ttl_ms: must be an integer 0..999999999999999')
end
local fence = tonumber(fence_arg)

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version.
local seen = redis.pcall('GET', KEYS[2])
if type(seen) == 'table' then
  return seen
end
seen = seen or '0'
if not string.find(seen, '^%d+$') or #seen > 16 or tonumber(seen) > 9007199254740991 then
  return redis.error_reply('CORRUPT seen: not an integer 0..9007199254740991')
end
seen = tonumber(seen)
if fence < seen then
  return {0, seen}
end

-- SET replaces a value of any type; STRLEN fails with WRONGTYPE instead, before anything is
-- written, so a misconfigured key name cannot silently destroy a hash or list.
local probe = redis.pcall('STRLEN', KEYS[1])
if type(probe) == 'table' then
  return probe
end
if ttl == '0' then
  redis.call('SET', KEYS[1], value)
  redis.call('SET', KEYS[2], fence_arg)
else
  local t = redis.call('TIME')
  local expiry = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ttl))
  redis.call('SET', KEYS[1], value, 'PXAT', expiry)
  redis.call('SET', KEYS[2], fence_arg, 'PXAT', expiry)
end
return {1, fence}
