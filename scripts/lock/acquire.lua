--- @name lock.acquire
--- @summary Take the lock if free (or already ours) and hand out a fencing token that never repeats.
--- @key 1 lock lock:{<resource>} holds the owner's token, expires after ttl_ms
--- @key 2 fence lock:{<resource>}:fence the last token handed out; expires with the lease it was handed out for (a lost key costs nothing: see the time floor); a string this script did not write is replaced, a key of another type is refused (WRONGTYPE)
--- @arg 1 token string random owner token (1..256 bytes)
--- @arg 2 ttl_ms integer>=1 lease length in milliseconds (at most 15 digits)
--- @returns array {acquired 1|0, fence token (1..2^53-1, 16 digits) if acquired else PTTL ms left (-1: no expiry), ttl_ms or 0}
--- @errors BADARG
--- @complexity O(1): 3 commands on a free lock (4 when the clock has not passed the last token), at most 5
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
-- keep the expiry (now + ttl) far inside what PX accepts.
if not string.find(ttl, '^[1-9]%d*$') or #ttl > 15 then
  return redis.error_reply('BADARG ttl_ms: must be an integer 1..999999999999999')
end

-- The token a fence key holds, or nil: absent, or anything this script did not write (a foreign
-- value is replaced; the time floor keeps tokens rising without it). Below 2^53 - 1, so + 1 stays
-- exact.
local function token_in(v)
  if v and #v <= 16 and string.find(v, '^%d+$') then
    v = tonumber(v)
    return v <= 9007199254740990 and v or nil
  end
end

-- Numbers go to Redis as numbers: Redis writes an integer below 10^17 with all its digits (no
-- exponent), and Lua skips string.format.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
-- Free: take it. NX never overwrites an owner (a key of another type counts as taken).
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  -- Swap the fence key to `now` and read what it held, in one command (SET ... GET, 6.2+).
  local last = redis.pcall('SET', KEYS[2], now, 'PX', ttl, 'GET')
  if type(last) == 'table' then
    -- WRONGTYPE: nothing may stay written; the lock key was absent (NX), so delete it again.
    redis.call('DEL', KEYS[1])
    return last
  end
  -- Usually the last token is an earlier time: one tonumber tells (nil, or a foreign number
  -- below now, is replaced as it is). Only a value at or above now is checked in full.
  local n = tonumber(last)
  if n and n >= now then
    n = token_in(last)
    if n and n >= now then
      -- The clock reads the same or an earlier microsecond than the last token: one above it.
      now = n + 1
      redis.call('SET', KEYS[2], now, 'PX', ttl)
    end
  end
  return {1, now, tonumber(ttl)}
end

-- Taken. pcall on the first read: Redis 6.2 wraps an error raised by redis.call in "ERR Error
-- running script ...", while returning the pcall error table hands Redis' own reply (WRONGTYPE)
-- back unchanged on every version.
local holder = redis.pcall('GET', KEYS[1])
if holder ~= token then
  if type(holder) == 'table' then
    return holder
  end
  return {0, redis.call('PTTL', KEYS[1]), 0}
end
-- A retry whose first reply was lost: the lock is ours and nobody took a token since, so the
-- stored one is ours (a new one if the key was lost meanwhile: still above every earlier one).
local fence = redis.pcall('GET', KEYS[2])
if type(fence) == 'table' then
  return fence
end
fence = token_in(fence) or now
redis.call('SET', KEYS[1], token, 'PX', ttl)
redis.call('SET', KEYS[2], fence, 'PX', ttl)
return {1, fence, tonumber(ttl)}
