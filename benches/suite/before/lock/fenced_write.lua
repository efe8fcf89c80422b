--- @name lock.fenced_write
--- @summary Write the protected value unless a newer fencing token has already written to it.
--- @key 1 data lock:{<resource>}:data the protected value (a string)
--- @key 2 seen lock:{<resource>}:seen highest fencing token seen at the resource; never expires
--- @arg 1 fence integer>=1 the writer's fencing token from lock.acquire (at most 15 digits)
--- @arg 2 value bytes the new value (may be empty)
--- @arg 3 ttl_ms integer>=0 expiry of the value in milliseconds; 0 = no expiry (at most 15 digits)
--- @returns array {written 1|0, the writer's fence (written) or the highest fence seen (refused)}
--- @errors BADARG, CORRUPT (CORRUPT: KEYS[2] holds something other than an integer)
--- @mode write
--- @min-server 6.2

if #KEYS ~= 2 then
  return redis.error_reply('BADARG keys: expected 2 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 3 then
  return redis.error_reply('BADARG argc: expected 3 (got ' .. #ARGV .. ')')
end
local fence_arg, value, ttl = ARGV[1], ARGV[2], ARGV[3]
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. No leading zeros, since Redis
-- refuses '007' as an expire time. 15 digits keep the numbers exact as Lua doubles.
if not string.find(fence_arg, '^[1-9]%d*$') then
  return redis.error_reply('BADARG fence: must be an integer >= 1')
end
if #fence_arg > 15 then
  return redis.error_reply('BADARG fence: must be at most 15 digits')
end
if ttl ~= '0' and not string.find(ttl, '^[1-9]%d*$') then
  return redis.error_reply('BADARG ttl_ms: must be an integer >= 0')
end
if #ttl > 15 then
  return redis.error_reply('BADARG ttl_ms: must be at most 15 digits')
end
local fence = tonumber(fence_arg)

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version.
local seen_raw = redis.pcall('GET', KEYS[2])
if type(seen_raw) == 'table' then
  return seen_raw
end
local seen = 0
if seen_raw then
  if not string.find(seen_raw, '^%d+$') then
    return redis.error_reply('CORRUPT seen: holds a non-integer value')
  end
  seen = tonumber(seen_raw)
end
-- Equal is allowed: the current holder may write several times with the same token.
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
else
  redis.call('SET', KEYS[1], value, 'PX', ttl)
end
if fence > seen then
  redis.call('SET', KEYS[2], fence_arg)
end
return {1, fence}
