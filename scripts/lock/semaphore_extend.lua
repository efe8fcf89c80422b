--- @name lock.semaphore_extend
--- @summary Push a live semaphore lease's expiry to ttl_ms from now.
--- @key 1 sem sem:{<name>} sorted set: member = lease token, score = lease expiry (server ms); the key expires at its latest lease's end or up to min(ttl_ms / 8, 10000) ms later (see lock.semaphore_acquire)
--- @arg 1 token string the lease token given to lock.semaphore_acquire (1..256 bytes)
--- @arg 2 ttl_ms integer>=1 new lease length in milliseconds, from now (at most 15 digits)
--- @returns integer 1 extended, 0 no live lease for this token (the holder must stop acting)
--- @errors BADARG, CORRUPT (the key has no expiry and its latest lease score is not one this script family writes)
--- @complexity O(log n) for n leases: at most 6 commands
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 2 then
  return redis.error_reply('BADARG argc: expected 2 (got ' .. #ARGV .. ')')
end
local token, ttl_arg = ARGV[1], ARGV[2]
if token == '' then
  return redis.error_reply('BADARG token: must be a non-empty string')
end
if #token > 256 then
  return redis.error_reply('BADARG token: must be at most 256 bytes')
end
-- A pattern, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. 15 digits keep now + ttl
-- exact as a Lua double.
if not string.find(ttl_arg, '^[1-9]%d*$') then
  return redis.error_reply('BADARG ttl_ms: must be an integer >= 1')
end
if #ttl_arg > 15 then
  return redis.error_reply('BADARG ttl_ms: must be at most 15 digits')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version.
local score = redis.pcall('ZSCORE', KEYS[1], token)
if type(score) == 'table' then
  return score
end
-- An expired lease is not revived: its permit may already have gone to someone else.
if not score or tonumber(score) <= now then
  return 0
end
local expiry = now + tonumber(ttl_arg)
-- The key must outlive its latest lease, or the extended lease would vanish with it. Our writes
-- always leave an expiry; none (-1) means a key we did not write: its latest lease counts.
local pttl = redis.call('PTTL', KEYS[1])
local until_ms = now + pttl
if pttl == -1 then
  local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  until_ms = tonumber(latest[2])
  if until_ms ~= until_ms or until_ms > now + 1e15 then
    return redis.error_reply('CORRUPT sem: a lease score not written by this script: ' .. latest[2])
  end
end
-- '%d', not tostring: tostring switches to exponent notation past 14 digits.
redis.call('ZADD', KEYS[1], string.format('%d', expiry), token)
if until_ms < expiry or pttl == -1 then
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', math.max(until_ms, expiry)))
end
return 1
