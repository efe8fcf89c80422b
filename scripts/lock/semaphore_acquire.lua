--- @name lock.semaphore_acquire
--- @summary Take one of N leased permits (or refresh ours); expired leases are freed first, at most 64 per call.
--- @key 1 sem sem:{<name>} sorted set: member = lease token, score = lease expiry (server ms); the key expires between its latest lease's end and s later, s = min(ttl_ms / 8, 10000) of the lease that set it
--- @arg 1 token string random lease token (1..256 bytes)
--- @arg 2 permits integer>=1 the most holders at once (at most 15 digits)
--- @arg 3 ttl_ms integer>=1 lease length in milliseconds (at most 15 digits)
--- @returns array {acquired 1|0, ttl_ms (acquired) or retry_after_ms >= 1 (refused), live holders after the call}
--- @errors BADARG, CORRUPT (a lease score this script cannot have written: not a number, or more than 10^15 ms ahead)
--- @complexity O(log n) for n leases: at most 9 commands, and at most 64 expired leases removed per call (the rest on later calls, or with the key)
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 3 then
  return redis.error_reply('BADARG argc: expected 3 (got ' .. #ARGV .. ')')
end
local token, permits, ttl = ARGV[1], ARGV[2], ARGV[3]
if token == '' or #token > 256 then
  return redis.error_reply('BADARG token: must be 1..256 bytes')
end
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. 15 digits keep now + ttl
-- exact as a Lua double.
if not string.find(permits, '^[1-9]%d*$') or #permits > 15 then
  return redis.error_reply('BADARG permits: must be an integer 1..999999999999999')
end
if not string.find(ttl, '^[1-9]%d*$') or #ttl > 15 then
  return redis.error_reply('BADARG ttl_ms: must be an integer 1..999999999999999')
end
permits, ttl = tonumber(permits), tonumber(ttl)

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local expiry = now + ttl

-- A score we wrote is an expiry at most 10^15 ms after the server time of its write.
local function lease_end(score)
  score = tonumber(score)
  if not score or score ~= score or score > now + 1e15 then
    return nil
  end
  return score
end

-- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
-- the pcall error table hands Redis' own WRONGTYPE back unchanged on every version. A lease
-- whose expiry is now or earlier is over; those sort first (ranks below `expired`). Everything is
-- read before anything is written, so a CORRUPT reply leaves the key as it was.
local expired = redis.pcall('ZCOUNT', KEYS[1], '-inf', now)
if type(expired) == 'table' then
  return expired
end
local live = redis.call('ZCARD', KEYS[1]) - expired
-- Ours only if present among the live leases.
local held
if expired > 0 or live >= permits then
  local rank = redis.call('ZRANK', KEYS[1], token)
  held = rank and rank >= expired
end
local corrupt = 'CORRUPT sem: a lease score not written by this script: '

-- Removing every expired lease at once could take milliseconds (permits may be huge): at most
-- 64 go per call, the rest on later calls (they are skipped by rank meanwhile) or with the key.
local function prune()
  if expired > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, math.min(expired, 64) - 1)
  end
end

if not held and live >= permits then
  local first = redis.call('ZRANGE', KEYS[1], expired, expired, 'WITHSCORES')
  local score = lease_end(first[2])
  if not score then
    return redis.error_reply(corrupt .. first[2])
  end
  prune()
  return {0, math.max(score - now, 1), live}
end

-- The key outlives its latest lease by at most s, so an abandoned semaphore vanishes; the slack
-- spares most acquires a PEXPIREAT. Our writes always leave an expiry; none (-1) means a key we
-- did not write: its latest lease counts.
local pttl = redis.call('PTTL', KEYS[1])
local until_ms = now + pttl
if pttl == -1 then
  local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  until_ms = lease_end(latest[2])
  if not until_ms then
    return redis.error_reply(corrupt .. latest[2])
  end
end
prune()
local added = redis.call('ZADD', KEYS[1], string.format('%d', expiry), token)
if not held then
  -- Without a rank lookup (nothing expired, room left), ZADD tells: 1 new, 0 already ours.
  live = live + ((expired > 0 or live >= permits) and 1 or added)
end
if until_ms < expiry or pttl == -1 then
  local slack = math.min(math.floor(ttl / 8), 10000)
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', math.max(until_ms, expiry + slack)))
end
return {1, ttl, live}
