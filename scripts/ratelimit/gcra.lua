--- @name ratelimit.gcra
--- @summary GCRA (generic cell rate algorithm) for 1..N limits in one all-or-nothing call; weighted, peek.
--- @key 1.. tat rl:{<subject>}:<name> string, one per limit; keys must be distinct and, with 2 or more, share one non-empty hash tag; each expires once its limit is fully replenished (at most 2 * burst * period_ms / rate ms after the last counted call)
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

-- The key holds the theoretical arrival time (TAT) as "<us>.<6 digits>": server microseconds plus a
-- fraction, because T in microseconds is often fractional and rounding it on every call would drift.
-- Arithmetic runs relative to now (small numbers, near-exact doubles); a slack of EPS cells absorbs
-- float error so that burst calls at one instant admit exactly burst. A peek returns the same reply
-- a real call would (dry run). Keys must be distinct: a key given twice would be read twice and
-- written twice, counting one request double.

local n = #KEYS
if n == 0 then
  return redis.error_reply('BADARG keys: at least one key')
end
if #ARGV ~= 2 + 3 * n then
  return redis.error_reply('BADARG argc: expected 2 + 3 per key (got ' .. #ARGV .. ')')
end
-- Patterns, not tonumber alone: tonumber takes 'inf', '0x10' and '1e3'. Bounded values stay exact.
local find, tonumber = string.find, tonumber
local function int(s, max)
  local x = find(s, '^[1-9]%d*$') and tonumber(s)
  return x and x <= max and x
end
local cost = int(ARGV[1], 999999999999999)
if not cost then
  return redis.error_reply('BADARG cost: must be an integer 1..999999999999999')
end
local flags = ARGV[2]
if flags ~= '0' and flags ~= '1' and flags ~= '2' and flags ~= '3' then
  return redis.error_reply('BADARG flags: must be an integer 0..3')
end
local peek, penalty = flags == '1' or flags == '3', flags >= '2'
-- Several keys must be distinct and share a hash tag (Redis Cluster's rule: the first {...},
-- non-empty), or a cluster refuses the call.
if n > 1 then
  local tag, seen = string.match(KEYS[1], '{([^}]*)}'), {}
  for i = 1, n do
    if seen[KEYS[i]] then
      return redis.error_reply('BADARG keys: key ' .. i .. ' repeats an earlier key')
    end
    seen[KEYS[i]] = true
    if not tag or tag == '' or string.match(KEYS[i], '{([^}]*)}') ~= tag then
      return redis.error_reply('BADARG keys: several keys must share one non-empty {hash tag}')
    end
  end
end

local EPS = 1e-6
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]

-- Read every key before deciding: nothing is written unless all limits allow.
local emission, bursts, used, never, refused = {}, {}, {}, 0, 0
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
  local T = period * 1000 / rate
  emission[i], bursts[i] = T, burst
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'table' then
    return v
  end
  -- Backlog in cells: how far the TAT lies ahead of now, in emission intervals (0 once replenished).
  local u = 0
  if v then
    local us, frac = string.match(v, '^(%d+)%.(%d%d%d%d%d%d)$')
    -- A TAT we wrote lies at most 2 * 10^15 us ahead (twice the largest burst * T); twice that
    -- leaves room for a clock step, and keeps every number below exact.
    if not us or #us > 17 or us - now > 4e15 then
      return redis.error_reply('CORRUPT key ' .. i .. ' (tat): value is not a TAT written by this script')
    end
    u = (us - now + frac / 1e6) / T
    if u < 0 then
      u = 0
    end
  end
  used[i] = u
  if cost > burst then
    never = (never > 0) and never or i
  elseif u + cost > burst + EPS and refused == 0 then
    refused = i
  end
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too (unless it can never fit), capped at burst + cost cells
-- so a subject is locked out only while it keeps hammering.
local record = (allowed or (penalty and never == 0)) and not peek
local floor, ceil = math.floor, math.ceil

-- Numbers describe the state after this call (penalty included), so sleeping retry_after works.
local reply, wait = { allowed and 1 or 0, (never > 0) and never or refused, 0 }, 0
for i = 1, n do
  local burst, T, after = bursts[i], emission[i], used[i]
  if allowed or (penalty and never == 0) then
    -- The cap never lowers a backlog that an earlier, heavier penalty left.
    after = math.max(after, math.min(after + cost, burst + cost))
  end
  local retry = 0
  if cost > burst then
    retry = -1
  elseif not allowed and after + cost > burst + EPS then
    retry = ceil((after + cost - burst) * T / 1000)
  end
  local reset = ceil(after * T / 1000)
  if wait >= 0 then
    wait = (retry < 0) and -1 or math.max(wait, retry)
  end
  local left = floor(burst - after + EPS)
  reply[4 * i], reply[4 * i + 1], reply[4 * i + 2], reply[4 * i + 3] =
    burst, left > 0 and left or 0, retry, reset
  if record then
    -- Fraction floored: the error (< 1 ps per call) only ever favours the subject, never drifts against.
    local ahead = after * T
    local whole = floor(ahead)
    local frac = floor((ahead - whole) * 1e6)
    -- '%d', not tostring: tostring switches to exponent notation past 14 digits. The key dies once
    -- the TAT has passed, i.e. when the limit is fully replenished. PXAT, not PX: Redis rewrites
    -- PX to PXAT for replication, which costs more than computing it here.
    redis.call('SET', KEYS[i], string.format('%d.%06d', now + whole, frac < 999999 and frac or 999999),
      'PXAT', string.format('%d', floor(now / 1000) + reset + 1))
  end
end
reply[3] = wait
return reply
