--- @name ratelimit.gcra
--- @summary GCRA (generic cell rate algorithm) for 1..N limits in one all-or-nothing call; weighted, peek.
--- @key 1.. tat rl:{<subject>}:<name> string, one per limit; keys must be distinct and, with 2 or more, share one non-empty hash tag; each expires between the time its limit is fully replenished and 2 * s ms later, s = min(burst * period_ms / rate / 8, 10000) rounded down, at least 1 (so at most 2.25 * burst * period_ms / rate + 1 ms after the last counted call)
--- @arg 1 cost integer>=1 weight of this request, in cells (at most 999999999999999)
--- @arg 2 flags integer 0..3 bit 1 = peek (dry run, read commands only), bit 2 = penalty (refusals count)
--- @arg 3.. rate integer>=1 cells replenished per period (at most 10^12)
--- @arg 4.. period_ms integer>=1 the period in ms; emission interval T = period_ms / rate (at most 10^12)
--- @arg 5.. burst integer>=1 capacity: cells that may pass at once; burst * T must be <= 10^12 ms
--- @returns array {allowed, refused, retry_after_ms, then per limit: burst, remaining, retry_ms, reset_ms}
--- @errors BADARG, CORRUPT (a key value this script did not write, or a TAT more than 4 * 10^15 us ahead)
--- @complexity O(n) for n keys: 1 + 2n commands
--- @mode write
--- @min-server 6.2

-- The key holds the theoretical arrival time (TAT): 25 bytes, a marker byte 2 then three
-- little-endian doubles (struct.pack '<Bddd'): server microseconds and a fraction in millionths of
-- a microsecond, because T in microseconds is often fractional and rounding it on every call would
-- drift, then the key's expiry (unix ms). Packed, not text: matching and formatting it cost more
-- than the commands. The expiry is set (PXAT) only when the TAT passes it, to the TAT + 2 * s
-- (s as in the header): setting it costs about as much as the rest of the write, so the other
-- writes keep it (KEEPTTL). The text layout before ("<us>.<6 digits>", expiring at the TAT) is
-- still read, and rewritten packed by the next write.
-- Arithmetic runs relative to now (small numbers, near-exact doubles); a slack of EPS cells absorbs
-- float error so that burst calls at one instant admit exactly burst. A peek returns the same reply
-- a real call would (dry run). Keys must be distinct: a key given twice would be read twice and
-- written twice, counting one request double. With one key no per-key table is built (an
-- allocation per call).

local n = #KEYS
if n == 0 then
  return redis.error_reply('BADARG keys: at least one key')
end
if #ARGV ~= 2 + 3 * n then
  return redis.error_reply('BADARG argc: expected 2 + 3 per key (got ' .. #ARGV .. ')')
end
-- Patterns, not tonumber alone: tonumber takes 'inf', '0x10' and '1e3'. Bounded values stay exact.
local find, match, tonumber = string.find, string.match, tonumber
local INT = '^[1-9]%d*$'
local cost = ARGV[1]
-- The usual cost first: equal strings are one string in Lua, compared by address.
if cost == '1' then
  cost = 1
else
  cost = find(cost, INT) and tonumber(cost)
  if not cost or cost > 999999999999999 then
    return redis.error_reply('BADARG cost: must be an integer 1..999999999999999')
  end
end
local flags = ARGV[2]
if flags ~= '0' and flags ~= '1' and flags ~= '2' and flags ~= '3' then
  return redis.error_reply('BADARG flags: must be an integer 0..3')
end
local peek, penalty = flags == '1' or flags == '3', flags >= '2'
-- Several keys must be distinct and share a hash tag (Redis Cluster's rule: the first {...},
-- non-empty), or a cluster refuses the call.
if n > 1 then
  local tag, seen = match(KEYS[1], '{([^}]*)}'), n > 8 and {}
  for i = 1, n do
    local key = KEYS[i]
    -- Few keys: compared pairwise (Lua strings compare by address), no table.
    if seen then
      if seen[key] then
        return redis.error_reply('BADARG keys: key ' .. i .. ' repeats an earlier key')
      end
      seen[key] = true
    else
      for j = 1, i - 1 do
        if KEYS[j] == key then
          return redis.error_reply('BADARG keys: key ' .. i .. ' repeats an earlier key')
        end
      end
    end
    if not tag or tag == '' or match(key, '{([^}]*)}') ~= tag then
      return redis.error_reply('BADARG keys: several keys must share one non-empty {hash tag}')
    end
  end
end

local EPS = 1e-6
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]

-- Read every key before deciding: nothing is written unless all limits allow. The state of a
-- key: emission interval T (us), burst, backlog in cells; in these locals with one key, with more
-- each key's goes into st too.
local T, burst, used, expiry
local st = n > 1 and {} or nil
local never, refused = 0, 0
for i = 1, n do
  local rate, period = ARGV[3 * i], ARGV[3 * i + 1]
  burst = ARGV[3 * i + 2]
  rate = find(rate, INT) and tonumber(rate)
  if not rate or rate > 1e12 then
    return redis.error_reply('BADARG rate[' .. i .. ']: must be an integer 1..1000000000000')
  end
  period = find(period, INT) and tonumber(period)
  if not period or period > 1e12 then
    return redis.error_reply('BADARG period_ms[' .. i .. ']: must be an integer 1..1000000000000')
  end
  burst = find(burst, INT) and tonumber(burst)
  if not burst or burst > 1e12 then
    return redis.error_reply('BADARG burst[' .. i .. ']: must be an integer 1..1000000000000')
  end
  -- Bounds the TAT to now + 2 * 10^15 us, so it stays an exact integer part in a double.
  if burst * period / rate > 1e12 then
    return redis.error_reply('BADARG burst[' .. i .. ']: burst * period_ms / rate must be <= 10^12 ms')
  end
  T = period * 1000 / rate
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local v = redis.pcall('GET', KEYS[i])
  -- Backlog in cells: how far the TAT lies ahead of now, in emission intervals (0 once replenished).
  used, expiry = 0, nil
  if v then
    if type(v) == 'table' then
      return v
    end
    local mark, us, frac
    if #v == 25 then
      mark, us, frac, expiry = struct.unpack('<Bddd', v)
    end
    if mark ~= 2 then
      -- The text layout, or a foreign value.
      us, frac = match(v, '^(%d+)%.(%d%d%d%d%d%d)$')
      if us and #us <= 17 then
        us, frac, expiry = us + 0, frac + 0, 0
      else
        us = nil
      end
    end
    -- A TAT we wrote lies at most 2 * 10^15 us ahead (twice the largest burst * T); twice that
    -- leaves room for a clock step, and keeps every number below exact. A NaN fails every
    -- comparison.
    if not (us and us - now <= 4e15 and us >= 0 and us % 1 == 0 and frac >= 0 and frac < 1e6
      and frac % 1 == 0 and expiry >= 0 and expiry % 1 == 0 and expiry - us / 1000 <= 20002) then
      return redis.error_reply('CORRUPT key ' .. i .. ' (tat): value is not a TAT written by this script')
    end
    used = (us - now + frac / 1e6) / T
    if used < 0 then
      used = 0
    end
  end
  if st then
    st[i] = { T, burst, used, expiry }
  end
  if cost > burst then
    never = (never > 0) and never or i
  elseif used + cost > burst + EPS and refused == 0 then
    refused = i
  end
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too (unless it can never fit), capped at burst + cost cells
-- so a subject is locked out only while it keeps hammering.
local counted = allowed or (penalty and never == 0)
local record = counted and not peek

-- Numbers describe the state after this call (penalty included), so sleeping retry_after works.
local reply, wait = { allowed and 1 or 0, (never > 0) and never or refused, 0, 0, 0, 0, 0 }, 0
for i = 1, n do
  if st then
    T, burst, used, expiry = unpack(st[i], 1, 4)
  end
  local after = used
  if counted then
    -- The cap never lowers a backlog that an earlier, heavier penalty left.
    local capped = after + cost
    if capped > burst + cost then
      capped = burst + cost
    end
    if capped > after then
      after = capped
    end
  end
  -- x - x % 1 is floor(x), and -floor(-x) ceil(x), without a C call each.
  local retry = 0
  if cost > burst then
    retry = -1
  elseif not allowed and after + cost > burst + EPS then
    retry = -(after + cost - burst) * T / 1000
    retry = -(retry - retry % 1)
  end
  local reset = -after * T / 1000
  reset = -(reset - reset % 1)
  if wait >= 0 then
    wait = (retry < 0) and -1 or (retry > wait and retry or wait)
  end
  local left = burst - after + EPS
  left = left - left % 1
  reply[4 * i], reply[4 * i + 1], reply[4 * i + 2], reply[4 * i + 3] =
    burst, left > 0 and left or 0, retry, reset
  if record then
    -- Fraction floored: the error (< 1 ps per call) only ever favours the subject, never drifts against.
    local ahead = after * T
    local whole = ahead - ahead % 1
    local frac = (ahead - whole) * 1e6
    frac = frac - frac % 1
    -- The key must live until the TAT has passed, i.e. until the limit is fully replenished: the
    -- first whole ms after it is at or past it.
    local tat = now + whole
    local due = (tat - tat % 1000) / 1000 + 1
    frac = frac < 999999 and frac or 999999
    if expiry and expiry >= due then
      redis.call('SET', KEYS[i], struct.pack('<Bddd', 2, tat, frac, expiry), 'KEEPTTL')
    else
      local s = burst * T / 8000
      s = s - s % 1
      s = s > 10000 and 10000 or (s < 1 and 1 or s)
      -- PXAT, not PX: Redis rewrites PX to PXAT for replication, which costs more than computing
      -- it here; a number, not a string: Redis formats integers below 10^17 exactly.
      redis.call('SET', KEYS[i], struct.pack('<Bddd', 2, tat, frac, due + 2 * s), 'PXAT', due + 2 * s)
    end
  end
end
reply[3] = wait
return reply
