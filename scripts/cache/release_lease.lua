--- @name cache.release_lease
--- @summary Give a fill lease back, but only if this caller's token still holds it.
--- @key 1 lease cache:{<segment>}:lease:<key> the fill lease's holder token (see cache.get); expires after the lease_ms of cache.get
--- @arg 1 token string the lease token given to cache.get (1..256 bytes)
--- @returns integer 1 released, 0 not held by this token (expired, already freed by cache.set, or another caller's)
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
if token == '' or #token > 256 then
  return redis.error_reply('BADARG token: must be 1..256 bytes')
end

-- pcall on the first touch: Redis 6.2 wraps an error raised by redis.call ("ERR Error running
-- script"); the pcall error table hands Redis' own WRONGTYPE back unchanged on every version.
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then
  return holder
end
-- Compare and delete in one step: the lease may have expired and been taken by another filler,
-- whose lease a plain DEL would steal. Not holding it is a normal outcome, not an error.
if holder == token then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
