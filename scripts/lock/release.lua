--- @name lock.release
--- @summary Release the lock, but only if it is still held by this token.
--- @key 1 lock lock:{<resource>} holds the owner's token
--- @arg 1 token string the owner token given to lock.acquire (1..256 bytes)
--- @returns integer 1 released, 0 not held by this token (expired, already released, or another owner's)
--- @errors BADARG
--- @complexity O(1): 2 commands
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
local holder = redis.pcall('GET', KEYS[1])
-- Compare and delete in one step: a plain DEL could remove a lock that expired and was then
-- taken by someone else. Not holding it is a normal outcome (retry, expiry), not an error.
-- Compared first: an error table never equals the token, so the usual path skips type().
if holder == token then
  redis.call('DEL', KEYS[1])
  return 1
end
if type(holder) == 'table' then
  return holder
end
return 0
