--- @name lock.semaphore_acquire
--- @summary Take one of N leased permits (or refresh ours); expired leases are freed first.
--- @key 1 sem sem:{<name>} sorted set: member = lease token, score = lease expiry (server ms)
--- @arg 1 token string random lease token (1..256 bytes)
--- @arg 2 permits integer>=1 the most holders at once (at most 15 digits)
--- @arg 3 ttl_ms integer>=1 lease length in milliseconds (at most 15 digits)
--- @returns array {acquired 1|0, ttl_ms (acquired) or retry_after_ms >= 1 (refused), holders after the call}
--- @errors BADARG
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 3 then
  return redis.error_reply('BADARG argc: expected 3 (got ' .. #ARGV .. ')')
end
local token, permits_arg, ttl_arg = ARGV[1], ARGV[2], ARGV[3]
if token == '' then
  return redis.error_reply('BADARG token: must be a non-empty string')
end
if #token > 256 then
  return redis.error_reply('BADARG token: must be at most 256 bytes')
end
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. 15 digits keep now + ttl
-- exact as a Lua double.
if not string.find(permits_arg, '^[1-9]%d*$') then
  return redis.error_reply('BADARG permits: must be an integer >= 1')
end
if #permits_arg > 15 then
  return redis.error_reply('BADARG permits: must be at most 15 digits')
end
if not string.find(ttl_arg, '^[1-9]%d*$') then
  return redis.error_reply('BADARG ttl_ms: must be an integer >= 1')
end
if #ttl_arg > 15 then
  return redis.error_reply('BADARG ttl_ms: must be at most 15 digits')
end
local permits, ttl = tonumber(permits_arg), tonumber(ttl_arg)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- '%d', not tostring: tostring switches to exponent notation past 14 digits.
local expiry = string.format('%d', now + ttl)

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version. Pruning comes first, so a wrong type
-- is met before any write. A lease whose expiry is now or earlier is over.
local pruned = redis.pcall('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if type(pruned) == 'table' then
  return pruned
end
local holders = redis.call('ZCARD', KEYS[1])

local held = redis.call('ZSCORE', KEYS[1], token)
if not held and holders >= permits then
  local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(tonumber(earliest[2]) - now, 1), holders}
end

redis.call('ZADD', KEYS[1], expiry, token)
if not held then
  holders = holders + 1
end
-- The key lives exactly as long as its latest lease, so an abandoned semaphore vanishes.
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(latest[2])))
return {1, ttl, holders}
