--- @name ratelimit.sliding_window
--- @summary Exact sliding-window log for 1..N limits in one all-or-nothing call; weighted, peek, penalty.
--- @key 1.. log rl:{<subject>}:<name> sorted set, one per limit; all keys of a call share the hash tag
--- @arg 1 cost integer>=1 weight of this request (at most 15 digits)
--- @arg 2 flags integer 0..3 bit 1 = peek (dry run, read commands only), bit 2 = penalty (refusals count)
--- @arg 3.. limit integer>=1 most total cost admitted within the window (at most 10^12)
--- @arg 4.. window_ms integer>=1 window length in ms (at most 10^12)
--- @returns array {allowed, refused, retry_after_ms, then per limit: limit, remaining, retry_ms, reset_ms}
--- @errors BADARG, CORRUPT (a log member this script did not write)
--- @mode write
--- @min-server 6.2

-- Layout: member "<score_us>:<cum>:<cost>", score = server time in microseconds. <cum> is the running
-- total of costs ever logged on the key (mod 10^15), so the cost inside the window is one subtraction:
-- O(log n) per key whatever the costs. A refusal adds a binary search for the entry whose exit makes
-- room, O(log^2 n). n stays <= limit: admitted costs sum to <= limit, and writes drop entries older
-- than the newest ones summing to >= limit (see the trim below). A peek returns the same reply a real
-- call would (dry run). Keys must be distinct; give one key the same limit and window on every call.

local n = #KEYS
if n == 0 then
  return redis.error_reply('BADARG keys: at least one key')
end
if #ARGV ~= 2 + 2 * n then
  return redis.error_reply('BADARG argc: expected 2 + 2 per key (got ' .. #ARGV .. ')')
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
local limits, windows, seen = {}, {}, {}
for i = 1, n do
  limits[i] = int(ARGV[1 + 2 * i], 1e12)
  if not limits[i] then
    return redis.error_reply('BADARG limit[' .. i .. ']: must be an integer 1..1000000000000')
  end
  windows[i] = int(ARGV[2 + 2 * i], 1e12)
  if not windows[i] then
    return redis.error_reply('BADARG window_ms[' .. i .. ']: must be an integer 1..1000000000000')
  end
  windows[i] = windows[i] * 1000
  if seen[KEYS[i]] then
    return redis.error_reply('BADARG keys: key ' .. i .. ' repeats an earlier key')
  end
  seen[KEYS[i]] = true
end

-- '%d', not tostring: tostring switches to exponent notation past 14 digits.
local function fmt(x)
  return string.format('%d', x)
end
-- Kept totals stay below 2 * 10^12, far under M, so differences mod M are exact.
local M = 1e15
local corrupt
-- Running total, cost and score of the entry at rank r; rank last + 1 is this call's entry, which
-- exists only in memory so a peek and a real call reach the same numbers.
local function at(s, r)
  if r > s.last then
    return s.new_cum, cost, s.new_score
  end
  local e = redis.call('ZRANGE', KEYS[s.i], r, r, 'WITHSCORES')
  local cum, c = string.match(e[1], '^%d+:(%d+):(%d+)$')
  if not cum then
    corrupt = corrupt or s.i
    return 0, 1, 0
  end
  return tonumber(cum), tonumber(c), tonumber(e[2])
end
-- Smallest rank in [first, hi] whose entries since the window start sum to >= target (target is
-- reachable at hi). Totals only grow with rank, hence the binary search.
local function search(s, target, hi)
  local lo = s.first
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if (at(s, mid) - s.base) % M >= target then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Read every key before deciding: nothing is written unless all limits allow.
local st, never, refused = {}, 0, 0
for i = 1, n do
  local s = { i = i, base = 0, used = 0, cum = 0, score = -1 }
  st[i] = s
  -- Entries at or before now - window have left it; their count is the rank of the first live one.
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local first = redis.pcall('ZCOUNT', KEYS[s.i], '-inf', fmt(now - windows[i]))
  if type(first) == 'table' then
    return first
  end
  s.first, s.last = first, redis.call('ZCARD', KEYS[s.i]) - 1
  if s.last >= 0 then
    local _
    s.cum, _, s.score = at(s, s.last)
    s.base = s.cum
    if first <= s.last then
      local cum, c = at(s, first)
      s.first_cost, s.base = c, (cum - c) % M
      s.used = (s.cum - s.base) % M
    end
  end
  -- Scores strictly increase, so two calls in one server microsecond still get distinct members,
  -- rank order is log order, and a clock stepping back cannot reorder the log.
  s.new_cum, s.new_score = (s.cum + cost) % M, math.max(now, s.score + 1)
  if cost > limits[i] then
    never = (never > 0) and never or i
  elseif s.used + cost > limits[i] and refused == 0 then
    refused = i
  end
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too, unless it can never fit.
local record = allowed or (penalty and never == 0)

-- Numbers describe the state after this call (penalty entry included), so sleeping retry_after works.
local reply = { allowed and 1 or 0, (never > 0) and never or refused, 0 }
for i, s in ipairs(st) do
  local limit, used, hi, newest = limits[i], s.used, s.last, nil
  if record then
    used, hi, newest = used + cost, hi + 1, s.new_score
  elseif s.first <= s.last then
    newest = s.score
  end
  local retry = 0
  if cost > limit then
    retry = -1
  elseif not allowed and used + cost > limit then
    -- The oldest entries leave first; the one whose exit frees enough decides when we fit.
    local _, _, score = at(s, search(s, used + cost - limit, hi))
    retry = math.ceil((score + windows[i] - now) / 1000)
  end
  s.reset = newest and math.ceil((newest + windows[i] - now) / 1000) or 0
  -- Trim: an entry older than the newest ones summing to >= limit can only be seen together with
  -- them, and then every request is refused anyway and the deciding entry lies among them.
  s.drop = 0
  if record and s.first <= s.last and used - limit + 1 > s.first_cost then
    s.drop = search(s, used - limit + 1, hi) - s.first
  end
  reply[3] = (reply[3] < 0 or retry < 0) and -1 or math.max(reply[3], retry)
  reply[#reply + 1] = limit
  reply[#reply + 1] = math.max(limit - used, 0)
  reply[#reply + 1] = retry
  reply[#reply + 1] = s.reset
end
if corrupt then
  return redis.error_reply('CORRUPT key ' .. corrupt .. ': log member not written by this script')
end

if record and not peek then
  for i, s in ipairs(st) do
    redis.call('ZREMRANGEBYSCORE', KEYS[s.i], '-inf', fmt(now - windows[i]))
    if s.drop > 0 then
      redis.call('ZREMRANGEBYRANK', KEYS[s.i], 0, s.drop - 1)
    end
    redis.call('ZADD', KEYS[s.i], fmt(s.new_score), string.format('%d:%d:%d', s.new_score, s.new_cum, cost))
    -- The key dies when its newest entry leaves the window, so an idle subject costs nothing.
    redis.call('PEXPIRE', KEYS[s.i], s.reset + 1)
  end
end
return reply
