--- @name lock.acquire
--- @summary Take the lock if free (or already ours) and hand out a fencing token that never repeats.
--- @key 1 lock lock:{<resource>} holds the owner's token, expires after ttl_ms
--- @key 2 fence lock:{<resource>}:fence the last token handed out; expires with the lease it was handed out for (a lost key costs nothing: see the time floor)
--- @arg 1 token string random owner token (1..256 bytes)
--- @arg 2 ttl_ms integer>=1 lease length in milliseconds (at most 15 digits)
--- @returns array {acquired 1|0, fence token (1..2^53-1, 16 digits) if acquired else PTTL ms left (-1: no expiry), ttl_ms or 0}
--- @errors BADARG, CORRUPT (the fence key holds something other than an integer below 2^53 - 1)
--- @complexity O(1): at most 6 commands
--- @mode write
--- @min-server 6.2

-- Fencing tokens never repeat, even when the fence key is lost (FLUSH, eviction, expiry, a restart
-- without persistence, a failover that dropped the last write): a new token is
-- max(last token + 1, server time in microseconds). The key only guards against a clock that
-- reads the same or an earlier microsecond; once it is gone, time alone keeps tokens rising.
-- Clock assumption: the server clock (of whichever server answers after a failover) never steps
-- back past a token already handed out. A step back of D can repeat tokens of the last D only if
-- the fence key is lost within that same span. Tokens stay below 2^53 (exact doubles) until 2255.

if #KEYS ~= 2 then
  return redis.error_reply('BADARG keys: expected 2 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 2 then
  return redis.error_reply('BADARG argc: expected 2 (got ' .. #ARGV .. ')')
end
local token, ttl = ARGV[1], ARGV[2]
if token == '' or #token > 256 then
  return redis.error_reply('BADARG token: must be 1..256 bytes')
end
-- A pattern, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. No leading zeros; 15 digits
-- keep now + ttl exact as a double.
if not string.find(ttl, '^[1-9]%d*$') or #ttl > 15 then
  return redis.error_reply('BADARG ttl_ms: must be an integer 1..999999999999999')
end

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE ...) back unchanged on every version. The fence key is read (and checked)
-- before anything is written, so a corrupt key fails the call with nothing changed.
local last = redis.pcall('GET', KEYS[2])
if type(last) == 'table' then
  return last
end
if last and (not string.find(last, '^%d+$') or #last > 16 or tonumber(last) > 9007199254740990) then
  return redis.error_reply('CORRUPT fence: not an integer 0..9007199254740990')
end
local t = redis.call('TIME')
local expiry = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ttl))
-- PXAT, not PX: the same expiry for both keys, and Redis replicates PX rewritten as PXAT anyway.
local free = redis.call('SET', KEYS[1], token, 'NX', 'PXAT', expiry)
local fence
if free then
  fence = math.max(tonumber(last or '0') + 1, t[1] * 1000000 + t[2])
else
  local holder = redis.pcall('GET', KEYS[1])
  if type(holder) == 'table' then
    return holder
  end
  if holder ~= token then
    return {0, redis.call('PTTL', KEYS[1]), 0}
  end
  -- A retry whose first reply was lost: the lock is ours and nobody took a token since, so the
  -- stored one is ours (a new one if the key was lost meanwhile: still above every earlier one).
  fence = tonumber(last or '0')
  if fence < 1 then
    fence = t[1] * 1000000 + t[2]
  end
  redis.call('SET', KEYS[1], token, 'PXAT', expiry)
end
redis.call('SET', KEYS[2], string.format('%d', fence), 'PXAT', expiry)
return {1, fence, tonumber(ttl)}
