--- @name lock.acquire
--- @summary Take the lock if free (or already ours) and hand out a new fencing token.
--- @key 1 lock lock:{<resource>} holds the owner's token, expires after ttl_ms
--- @key 2 fence lock:{<resource>}:fence fencing counter; never expires
--- @arg 1 token string random owner token (1..256 bytes)
--- @arg 2 ttl_ms integer>=1 lease length in milliseconds (at most 15 digits)
--- @returns array {acquired 1|0, fence token if acquired else PTTL ms left (-1: no expiry), ttl_ms or 0}
--- @errors BADARG
--- @mode write
--- @min-server 6.2

if #KEYS ~= 2 then
  return redis.error_reply('BADARG keys: expected 2 (got ' .. #KEYS .. ')')
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
-- refuses '007' as an expire time; the raw string goes to PX as is.
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
if not holder then
  -- INCR before SET: a script error does not roll back writes already made, so a corrupt
  -- counter must fail before the lock is taken.
  local fence = redis.pcall('INCR', KEYS[2])
  if type(fence) == 'table' then
    return fence
  end
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return {1, fence, tonumber(ttl)}
end

if holder == token then
  -- A retry whose first reply was lost. Every successful acquire INCRs the counter and the lock
  -- is exclusive, so nobody has incremented it since we took the lock: its value is our token.
  local fence = redis.pcall('GET', KEYS[2])
  if type(fence) == 'table' then
    return fence
  end
  fence = tonumber(fence or '')
  if not fence then
    -- The counter was deleted or evicted (or is corrupt: then INCR fails). A restarted, low
    -- token can only be refused at the resource, never let a stale write through.
    fence = redis.pcall('INCR', KEYS[2])
    if type(fence) == 'table' then
      return fence
    end
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, fence, tonumber(ttl)}
end

return {0, redis.call('PTTL', KEYS[1]), 0}
