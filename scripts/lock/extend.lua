--- @name lock.extend
--- @summary Reset the lock's expiry to ttl_ms from now, but only if this token still holds it.
--- @key 1 lock lock:{<resource>} holds the owner's token
--- @arg 1 token string the owner token given to lock.acquire (1..256 bytes)
--- @arg 2 ttl_ms integer>=1 new lease length in milliseconds, from now (at most 15 digits)
--- @returns integer 1 extended, 0 not held by this token (the holder must stop acting)
--- @errors BADARG
--- @complexity O(1): 2 commands
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 2 then
  return redis.error_reply('BADARG argc: expected 2 (got ' .. #ARGV .. ')')
end
local token, ttl = ARGV[1], ARGV[2]
if token == '' then
  return redis.error_reply('BADARG token: must be a non-empty string')
end
if #token > 256 then
  return redis.error_reply('BADARG token: must be at most 256 bytes')
end
-- A pattern, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. No leading zeros, since Redis
-- refuses '007' as an expire time; the raw string goes to PEXPIRE as is.
if not string.find(ttl, '^[1-9]%d*$') then
  return redis.error_reply('BADARG ttl_ms: must be an integer >= 1')
end
if #ttl > 15 then
  return redis.error_reply('BADARG ttl_ms: must be at most 15 digits')
end

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version.
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then
  return holder
end
-- An expired lock is not revived: another owner may already have taken it in between.
if holder == token then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
