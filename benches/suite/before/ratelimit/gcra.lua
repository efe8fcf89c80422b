--- @name ratelimit.gcra
--- @summary GCRA (generic cell rate algorithm) for 1..N limits in one all-or-nothing call; weighted, peek.
--- @key 1.. tat rl:{<subject>}:<name> string, one per limit; all keys of a call share the hash tag
--- @arg 1 cost integer>=1 weight of this request, in cells (at most 15 digits)
--- @arg 2 flags integer 0..3 bit 1 = peek (dry run, read commands only), bit 2 = penalty (refusals count)
--- @arg 3.. rate integer>=1 cells replenished per period (at most 10^12)
--- @arg 4.. period_ms integer>=1 the period in ms; emission interval T = period_ms / rate (at most 10^12)
--- @arg 5.. burst integer>=1 capacity: cells that may pass at once; burst * T must be <= 10^12 ms
--- @returns array {allowed, refused, retry_after_ms, then per limit: burst, remaining, retry_ms, reset_ms}
--- @errors BADARG, CORRUPT (a key value this script did not write)
--- @mode write
--- @min-server 6.2

-- The key holds the theoretical arrival time (TAT) as "<us>.<6 digits>": server microseconds plus a
-- fraction, because T in microseconds is often fractional and rounding it on every call would drift.
-- Arithmetic runs relative to now (small numbers, near-exact doubles); a slack of EPS cells absorbs
-- float error so that burst calls at one instant admit exactly burst. O(1) per key. A peek returns the
-- same reply a real call would (dry run). Keys must be distinct.

local n = #KEYS
if n == 0 then
  return redis.error_reply('BADARG keys: at least one key')
end
if #ARGV ~= 2 + 3 * n then
  return redis.error_reply('BADARG argc: expected 2 + 3 per key (got ' .. #ARGV .. ')')
end
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. 15 digits stay exact as a double.
local function int(s, max)
  if not string.find(s, '^[1-9]%d*$') or #s > 15 or tonumber(s) > max then
    return nil
  end
  return tonumber(s)
end
local cost = int(ARGV[1], 1e15)
if not cost then
  return redis.error_reply('BADARG cost: must be an integer >= 1 (at most 15 digits)')
end
if not string.find(ARGV[2], '^[0-3]$') then
  return redis.error_reply('BADARG flags: must be an integer 0..3')
end
local flags = tonumber(ARGV[2])
local peek, penalty = flags % 2 == 1, flags >= 2
local emission, bursts, seen = {}, {}, {}
for i = 1, n do
  local rate, period, burst = int(ARGV[3 * i], 1e12), int(ARGV[3 * i + 1], 1e12), int(ARGV[3 * i + 2], 1e12)
  if not rate then
    return redis.error_reply('BADARG rate[' .. i .. ']: must be an integer 1..1000000000000')
  end
  if not period then
    return redis.error_reply('BADARG period_ms[' .. i .. ']: must be an integer 1..1000000000000')
  end
  if not burst then
    return redis.error_reply('BADARG burst[' .. i .. ']: must be an integer 1..1000000000000')
  end
  -- Bounds the TAT to now + 2 * 10^15 us, so it stays an exact integer part in a double.
  if burst * period / rate > 1e12 then
    return redis.error_reply('BADARG burst[' .. i .. ']: burst * period_ms / rate must be <= 10^12 ms')
  end
  if seen[KEYS[i]] then
    return redis.error_reply('BADARG keys: key ' .. i .. ' repeats an earlier key')
  end
  seen[KEYS[i]] = true
  emission[i], bursts[i] = period * 1000 / rate, burst
end

local EPS = 1e-6
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Read every key before deciding: nothing is written unless all limits allow.
local used, never, refused = {}, 0, 0
for i = 1, n do
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'table' then
    return v
  end
  -- Backlog in cells: how far the TAT lies ahead of now, in emission intervals (0 once replenished).
  used[i] = 0
  if v then
    local us, frac = string.match(v, '^(%d+)%.(%d%d%d%d%d%d)$')
    if not us then
      return redis.error_reply('CORRUPT key ' .. i .. ': value is not a TAT written by this script')
    end
    used[i] = math.max(0, (tonumber(us) - now + tonumber(frac) / 1e6) / emission[i])
  end
  if cost > bursts[i] then
    never = (never > 0) and never or i
  elseif used[i] + cost > bursts[i] + EPS and refused == 0 then
    refused = i
  end
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too (unless it can never fit), capped at burst + cost cells
-- so a subject is locked out only while it keeps hammering.
local record = allowed or (penalty and never == 0)

-- Numbers describe the state after this call (penalty included), so sleeping retry_after works.
local reply = { allowed and 1 or 0, (never > 0) and never or refused, 0 }
for i = 1, n do
  local burst, T = bursts[i], emission[i]
  -- The cap never lowers a backlog that an earlier, heavier penalty left.
  local after = record and math.max(used[i], math.min(used[i] + cost, burst + cost)) or used[i]
  local retry = 0
  if cost > burst then
    retry = -1
  elseif not allowed and after + cost > burst + EPS then
    retry = math.ceil((after + cost - burst) * T / 1000)
  end
  local reset = math.ceil(after * T / 1000)
  reply[3] = (reply[3] < 0 or retry < 0) and -1 or math.max(reply[3], retry)
  reply[#reply + 1] = burst
  reply[#reply + 1] = math.max(math.floor(burst - after + EPS), 0)
  reply[#reply + 1] = retry
  reply[#reply + 1] = reset
  if record and not peek then
    -- Fraction floored: the error (< 1 ps per call) only ever favours the subject, never drifts against.
    local ahead = after * T
    local whole = math.floor(ahead)
    local frac = math.min(math.floor((ahead - whole) * 1e6), 999999)
    -- '%d', not tostring: tostring switches to exponent notation past 14 digits. The key dies once
    -- the TAT has passed, i.e. when the limit is fully replenished.
    redis.call('SET', KEYS[i], string.format('%d.%06d', now + whole, frac), 'PX', reset + 1)
  end
end
return reply
