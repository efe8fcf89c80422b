--- @name ratelimit.sliding_window
--- @summary Exact sliding-window log for 1..N limits in one all-or-nothing call; weighted, peek, penalty.
--- @key 1.. log rl:{<subject>}:<name> sorted set, one per limit; keys must be distinct and, with 2 or more, share one non-empty hash tag; each expires when its newest entry leaves the window; holds at most limit + 1 entries
--- @arg 1 cost integer>=1 weight of this request (at most 999999999999999)
--- @arg 2 flags integer 0..3 bit 1 = peek (dry run, read commands only), bit 2 = penalty (refusals count)
--- @arg 3.. limit integer>=1 most total cost admitted within the window (at most 10^12); give one key the same limit and window on every call
--- @arg 4.. window_ms integer>=1 window length in ms (at most 10^12)
--- @returns array {allowed, refused, retry_after_ms, then per limit: limit, remaining, retry_ms, reset_ms}
--- @errors BADARG, CORRUPT (a log member this script did not write)
--- @complexity per key: O(log n) commands on a log of n <= limit + 1 entries; 3 to 6 commands per key, plus, only when refusing with mixed costs, a binary search of at most log2(n) + 1 ZRANGE probes; at most 2 entries removed per key per call
--- @mode write
--- @min-server 6.2

-- Layout: member "<ts>:<cum>:<cost>", score = ts = server time in microseconds. <cum> is the running
-- total of costs logged on the key (mod 10^15), so the cost inside the window is one subtraction
-- between the newest entry and the first live one, each found by one O(log n) lookup. Scores
-- strictly increase (a clock step back cannot reorder the log). The log stays bounded by design:
-- admitted costs in a window sum to <= limit, and every write removes up to the 2 oldest entries
-- that can no longer matter (expired, or older than newer entries already summing to >= limit), so
-- a write never grows a log that holds such entries, and nothing is ever removed in bulk. A peek
-- returns the same reply a real call would (dry run). Keys must be distinct: a key given twice
-- would be read and written twice, counting one request double.

local n = #KEYS
if n == 0 then
  return redis.error_reply('BADARG keys: at least one key')
end
if #ARGV ~= 2 + 2 * n then
  return redis.error_reply('BADARG argc: expected 2 + 2 per key (got ' .. #ARGV .. ')')
end
-- Patterns, not tonumber alone: tonumber takes 'inf', '0x10' and '1e3'. Bounded values stay exact.
local find, match, tonumber, fmt = string.find, string.match, tonumber, string.format
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
  local tag, seen = match(KEYS[1], '{([^}]*)}'), {}
  for i = 1, n do
    if seen[KEYS[i]] then
      return redis.error_reply('BADARG keys: key ' .. i .. ' repeats an earlier key')
    end
    seen[KEYS[i]] = true
    if not tag or tag == '' or match(KEYS[i], '{([^}]*)}') ~= tag then
      return redis.error_reply('BADARG keys: several keys must share one non-empty {hash tag}')
    end
  end
end

local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
-- Kept totals stay below 2 * 10^12 + 10^15, far under M, so differences mod M are exact.
local M = 1e15
local corrupt

-- ts, cum, cost of a member; nil for a member this script did not write (or one far ahead).
local function parse(m)
  local ts, cum, c = match(m, '^(%d+):(%d+):([1-9]%d*)$')
  if not ts or #ts > 17 or #cum > 15 or #c > 16 or ts - now > 1e15 then
    return nil
  end
  return tonumber(ts), tonumber(cum), tonumber(c)
end

-- Read every key before deciding: nothing is written unless all limits allow.
local st, never, refused = {}, 0, 0
for i = 1, n do
  local limit, window = int(ARGV[1 + 2 * i], 1e12), int(ARGV[2 + 2 * i], 1e12)
  if not limit then
    return redis.error_reply('BADARG limit[' .. i .. ']: must be an integer 1..1000000000000')
  end
  if not window then
    return redis.error_reply('BADARG window_ms[' .. i .. ']: must be an integer 1..1000000000000')
  end
  window = window * 1000
  -- Entries at or before lo have left the window.
  local lo = now - window
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local head = redis.pcall('ZRANGE', KEYS[i], 0, 1)
  if head.err then
    return head
  end
  local s = { limit = limit, window = window, used = 0, total = 0, last = -1, head = head, live = false }
  st[i] = s
  if head[1] then
    local ts0, cum0, c0 = parse(head[1])
    local ts1, cum1 = ts0, cum0
    if head[2] then
      ts1, cum1 = parse(head[2])
    end
    local tsn, cumn = ts1, cum1
    if head[2] then
      tsn, cumn = parse(redis.call('ZRANGE', KEYS[i], -1, -1)[1] or '')
    end
    if not (ts0 and ts1 and tsn) then
      corrupt = corrupt or i
    else
      s.ts0, s.cum0, s.ts1, s.cum1, s.total, s.last = ts0, cum0, ts1, cum1, cumn, tsn
      -- The first live entry: the oldest, the second oldest, or found by score.
      local before
      if tsn <= lo then
        before = cumn
      elseif ts0 > lo then
        before = (cum0 - c0) % M
      elseif ts1 > lo then
        before = cum0
      else
        local f = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. fmt('%d', lo), '+inf', 'LIMIT', 0, 1)
        local _, cumf, cf = parse(f[1] or '')
        if not cumf then
          corrupt = corrupt or i
          cumf, cf = 0, 0
        end
        before = (cumf - cf) % M
      end
      s.used, s.live = (cumn - before) % M, tsn > lo
    end
  end
  if cost > limit then
    never = (never > 0) and never or i
  elseif s.used + cost > limit and refused == 0 then
    refused = i
  end
end
if corrupt then
  return redis.error_reply('CORRUPT key ' .. corrupt .. ' (log): a member not written by this script')
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too, unless it can never fit.
local record = allowed or (penalty and never == 0)
local ceil = math.ceil

-- The newest stored entry that, with the entries after it, sums to more than `over`: when it
-- leaves the window, a request of this cost fits. Entries cost >= 1, so it lies at most `over`
-- entries back from the newest, and every entry further back qualifies too: a binary search whose
-- first probe is one entry newer than that bound (exact at once when costs are equal).
local function deciding(i, s, over)
  -- m entries back from the newest (0 = the newest): does it qualify, and its ts.
  local function probe(m)
    local ts, cum, c = parse(redis.call('ZRANGE', KEYS[i], -m - 1, -m - 1)[1] or '')
    if not ts then
      corrupt = corrupt or i
      return true, 0
    end
    return (s.total - cum + c) % M > over, ts
  end
  local hi = math.min(over, redis.call('ZCARD', KEYS[i]) - 1)
  local _, ts = probe(hi)
  local lo, guess = 0, true
  while lo < hi do
    local mid = guess and hi - 1 or math.floor((lo + hi) / 2)
    guess = false
    local yes, mts = probe(mid)
    if yes then
      hi, ts = mid, mts
    else
      lo = mid + 1
    end
  end
  return ts
end

-- Numbers describe the state after this call (penalty entry included), so sleeping retry_after works.
local reply, wait = { allowed and 1 or 0, (never > 0) and never or refused, 0 }, 0
for i = 1, n do
  local s = st[i]
  local limit, window, used = s.limit, s.window, s.used
  local score = math.max(now, s.last + 1)
  if record then
    used = used + cost
  end
  local retry = 0
  if cost > limit then
    retry = -1
  elseif not allowed and used + cost > limit then
    -- Over limit - cost: the recorded attempt itself when it alone is too much, else a stored entry.
    local over = limit - cost
    local ts = score
    if not (record and cost > over) then
      ts = deciding(i, s, record and over - cost or over)
    end
    retry = ceil((ts + window - now) / 1000)
  end
  local newest = record and score or (s.live and s.last)
  local reset = newest and ceil((newest + window - now) / 1000) or 0
  if wait >= 0 then
    wait = (retry < 0) and -1 or math.max(wait, retry)
  end
  reply[4 * i], reply[4 * i + 1], reply[4 * i + 2], reply[4 * i + 3] =
    limit, used < limit and limit - used or 0, retry, reset
  s.score, s.reset = score, reset
end
if corrupt then
  return redis.error_reply('CORRUPT key ' .. corrupt .. ' (log): a member not written by this script')
end
reply[3] = wait

if record and not peek then
  local now_ms = math.floor(now / 1000)
  for i = 1, n do
    local s = st[i]
    local lo, total = now - s.window, (s.total + cost) % M
    -- Up to the 2 oldest entries go when they can no longer count: expired, or followed by newer
    -- entries that already sum to >= limit (then every window holding them is full anyway).
    local drop = 0
    if s.ts0 and (s.ts0 <= lo or (total - s.cum0) % M >= s.limit) then
      drop = 1
      if s.head[2] and (s.ts1 <= lo or (total - s.cum1) % M >= s.limit) then
        drop = 2
      end
    end
    if drop > 0 then
      redis.call('ZREMRANGEBYRANK', KEYS[i], 0, drop - 1)
    end
    -- '%d', not tostring (or a number argument): those switch to exponent notation past 14 digits.
    local score = fmt('%d', s.score)
    redis.call('ZADD', KEYS[i], score, score .. fmt(':%d:%d', total, cost))
    -- The key dies when its newest entry leaves the window, so an idle subject costs nothing.
    redis.call('PEXPIREAT', KEYS[i], fmt('%d', now_ms + s.reset + 1))
  end
end
return reply
