--- @name lock.semaphore_release
--- @summary Give back a semaphore lease.
--- @key 1 sem sem:{<name>} sorted set: member = lease token, score = lease expiry (server ms)
--- @arg 1 token string the lease token given to lock.semaphore_acquire (1..256 bytes)
--- @returns integer 1 a live lease was released, 0 not held (unknown, released already, or expired)
--- @errors BADARG
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 1 then
  return redis.error_reply('BADARG argc: expected 1 (got ' .. #ARGV .. ')')
end
local token = ARGV[1]
if token == '' then
  return redis.error_reply('BADARG token: must be a non-empty string')
end
if #token > 256 then
  return redis.error_reply('BADARG token: must be at most 256 bytes')
end

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version.
local score = redis.pcall('ZSCORE', KEYS[1], token)
if type(score) == 'table' then
  return score
end
if not score then
  return 0
end
redis.call('ZREM', KEYS[1], token)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A lease past its expiry was already free for others to take: removing it is tidying only,
-- and the caller must learn that it did not hold the permit up to now.
if tonumber(score) > now then
  return 1
end
return 0
