--- @name ratelimit.sliding_window
--- @summary Exact sliding-window log for 1..N limits in one all-or-nothing call; weighted, peek, penalty.
--- @key 1.. log rl:{<subject>}:<name> list, newest entry first, one per limit; keys must be distinct and, with 2 or more, share one non-empty hash tag; holds at most limit entries; expires between window_ms + s and window_ms + 2s after its newest entry, s = min(window_ms / 8, 10000) rounded down, at least 1
--- @arg 1 cost integer>=1 weight of this request (at most 999999999999999)
--- @arg 2 flags integer 0..3 bit 1 = peek (dry run, read commands only), bit 2 = penalty (refusals count)
--- @arg 3.. limit integer>=1 most total cost admitted within the window (at most 10^12); give one key the same limit and window on every call
--- @arg 4.. window_ms integer>=1 window length in ms (at most 10^12)
--- @returns array {allowed, refused, retry_after_ms, then per limit: limit, remaining, retry_ms, reset_ms}
--- @errors BADARG, CORRUPT (a log entry this script did not write)
--- @complexity per key, on a log of n <= limit entries: usually 2 to 4 commands; a binary search of at most log2(n) + 2 LINDEX probes only when more than one entry left the window since the last write, or when a refusal is decided by an entry newer than the oldest one in the window and costs are unequal (one LRANGE when they are equal); each LINDEX or LRANGE walks at most n entries; a write removes at most 64 entries
--- @mode write
--- @min-server 6.2

-- Layout: a list, newest entry at the head; an entry is 41 bytes, a marker byte 2 then five
-- little-endian doubles (struct.pack '<Bddddd'): ts = server time in microseconds (strictly
-- increasing, so a clock step back cannot reorder the log), cum the running total of costs logged
-- on the key (mod 10^15), the entry's cost, and fts, fbefore: the time and the running total
-- before the first entry that was in the window when this one was written. Packed, not text:
-- matching and formatting five numbers cost more than the commands. The cost inside the window
-- is one subtraction: total - fbefore, read from the head alone while that first entry is still
-- in the window; once it has left, the first live entry is the tail, or is found from the tail.
-- The log keeps the newest `limit` entries at most: those sum to >= limit already (every cost is
-- >= 1), so an older entry can only ever be seen beside them, when every request is refused
-- anyway and the deciding entry lies among them. A write drops at most 64 expired entries from
-- the tail, and a log whose entries have all left the window is unlinked (freed off the main
-- thread). A peek returns the same reply a real call would (dry run). Keys must be distinct: a
-- key given twice would be read and written twice, counting one request double. Older layouts
-- (a sorted set, then a list of "ts:cum:cost:fts:fbefore" text entries) are read as empty and
-- unlinked on the first write.
--
-- Cost (the server's time per call is the budget): the helpers of the slow paths are made only
-- when one is taken, and with one key no per-key table is built (allocations per call).

local n = #KEYS
if n == 0 then
  return redis.error_reply('BADARG keys: at least one key')
end
if #ARGV ~= 2 + 2 * n then
  return redis.error_reply('BADARG argc: expected 2 + 2 per key (got ' .. #ARGV .. ')')
end
-- Patterns, not tonumber alone: tonumber takes 'inf', '0x10' and '1e3'. Bounded values stay exact.
local find, tonumber = string.find, tonumber
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
  local match = string.match
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

local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
-- Totals kept in a log stay below 2 * 10^12, far under M, so differences mod M are exact.
local M = 1e15

-- The slow paths' helpers, made on first use only (see above).
local function helpers()
  -- ts, cum, cost, fts, fbefore of an entry; nil for one this script did not write, or one far
  -- ahead of now. Every number it returns is an integer below 2^53, exact. The head is checked
  -- the same way inline, below.
  local function parse_entry(e, now_us)
    if #e ~= 41 then
      return nil
    end
    local mark, ts, cum, c, fts, fb = struct.unpack('<Bddddd', e)
    -- A NaN fails every comparison.
    if mark == 2 and ts - now_us <= 1e15 and fts <= ts and fts >= 0 and c >= 1 and c < 1e15
      and cum >= 0 and cum < 1e15 and fb >= 0 and fb < 1e15 and ts % 1 == 0 and fts % 1 == 0
      and c % 1 == 0 and cum % 1 == 0 and fb % 1 == 0 then
      return ts, cum, c, fts, fb
    end
  end
  -- The entry m places from the head (0 = newest; negative from the tail): ts, cum, cost; nil
  -- for a missing or foreign one.
  local function at(key, m, now_us)
    return parse_entry(redis.call('LINDEX', key, m) or '', now_us)
  end
  -- The time of the newest stored entry that, with the entries after it, sums to more than
  -- `over`: when it leaves the window, a request of this cost fits; nil when an entry is foreign.
  -- Every cost is >= 1, so it lies at most `over` entries from the head, and every entry further
  -- back qualifies too: read the bound and the entry just newer (the answer at once when costs
  -- are equal), else search by halves.
  local function deciding(key, total, expired, over, now_us)
    local pair = redis.call('LRANGE', key, over > 0 and over - 1 or 0, over)
    local lo, hi, ts = 0
    if over > 0 and pair[2] then
      ts = parse_entry(pair[2], now_us)
      local nts, cum, c = parse_entry(pair[1], now_us)
      if not (ts and nts) then
        return nil
      end
      if (total - cum + c) % 1e15 <= over then
        return ts
      end
      hi, ts = over - 1, nts
    elseif over == 0 and pair[1] then
      return (parse_entry(pair[1], now_us))
    else
      hi = math.min(over, redis.call('LLEN', key) - 1 - expired)
      ts = at(key, hi, now_us)
    end
    while ts and lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local mts, cum, c = at(key, mid, now_us)
      if not mts then
        return nil
      elseif (total - cum + c) % 1e15 > over then
        hi, ts = mid, mts
      else
        lo = mid + 1
      end
    end
    return ts
  end
  return at, deciding
end
local at, deciding

-- Read every key before deciding: nothing is written unless all limits allow. The state of a
-- key: limit, window (us), used, total, newest ts (-1: none), expired entries at the tail, the
-- first live entry's ts, the running total before it and its cost (1, a lower bound, when only
-- the head was read), state (0 empty, 1 live, 2 stale: nothing in the window, 3 old layout). It
-- stays in these locals with one key; with more, each key's goes into st too.
local limit, window, used, total, last, expired, fts, fbefore, fcost, state
local st = n > 1 and {} or nil
local corrupt, never, refused = nil, 0, 0
for i = 1, n do
  limit, window = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  limit = find(limit, INT) and tonumber(limit)
  if not limit or limit > 1e12 then
    return redis.error_reply('BADARG limit[' .. i .. ']: must be an integer 1..1000000000000')
  end
  window = find(window, INT) and tonumber(window)
  if not window or window > 1e12 then
    return redis.error_reply('BADARG window_ms[' .. i .. ']: must be an integer 1..1000000000000')
  end
  window = window * 1000
  used, total, last, expired, fts, fbefore, fcost, state = 0, 0, -1, 0, 0, 0, 1, 0
  -- Entries at or before lo have left the window.
  local lo = now - window
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local head = redis.pcall('LINDEX', KEYS[i], 0)
  if type(head) == 'table' then
    if redis.call('TYPE', KEYS[i]).ok ~= 'zset' then
      return head
    end
    state = 3
  elseif head then
    -- The checks of parse_entry, inline: this is the hot path.
    local mark, tsn, cumn, cn, f, fb
    if #head == 41 then
      mark, tsn, cumn, cn, f, fb = struct.unpack('<Bddddd', head)
    end
    if not (mark == 2 and tsn - now <= 1e15 and f <= tsn and f >= 0 and cn >= 1 and cn < 1e15
      and cumn >= 0 and cumn < 1e15 and fb >= 0 and fb < 1e15 and tsn % 1 == 0 and f % 1 == 0
      and cn % 1 == 0 and cumn % 1 == 0 and fb % 1 == 0) then
      if find(head, '^%d+:%d+:%d+:%d+:%d+$') then
        state = 3
      else
        corrupt = corrupt or i
      end
    elseif tsn <= lo then
      last, total, state = tsn, cumn, 2
    else
      last, total, state, fts, fbefore = tsn, cumn, 1, f, fb
      if f <= lo then
        -- The first live entry has changed: usually the tail, or the one before it.
        if not at then
          at, deciding = helpers()
        end
        local key = KEYS[i]
        local ts, cum, c = at(key, -1, now)
        local e = 0
        if ts and ts <= lo then
          e = 1
          ts, cum, c = at(key, -2, now)
          if ts and ts <= lo then
            -- More left the window since the last write: find the last expired one by halves.
            local hi = redis.call('LLEN', key) - 1
            e = 2
            while ts and e < hi do
              local mid = math.floor((e + hi + 1) / 2)
              ts = at(key, -mid, now)
              if ts and ts <= lo then
                e = mid
              else
                hi = mid - 1
              end
            end
            if ts then
              ts, cum, c = at(key, -e - 1, now)
            end
          end
        end
        if ts then
          expired, fts, fbefore, fcost = e, ts, (cum - c) % M, c
        else
          corrupt = corrupt or i
        end
      end
      used = (total - fbefore) % M
    end
  end
  if st then
    st[i] = { limit, window, used, total, last, expired, fts, fbefore, fcost, state }
  end
  if cost > limit then
    never = (never > 0) and never or i
  elseif used + cost > limit and refused == 0 then
    refused = i
  end
end
if corrupt then
  return redis.error_reply('CORRUPT key ' .. corrupt .. ' (log): an entry not written by this script')
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too, unless it can never fit.
local record = allowed or (penalty and never == 0)

-- Numbers describe the state after this call (penalty entry included), so sleeping retry_after works.
local reply, wait = { allowed and 1 or 0, (never > 0) and never or refused, 0, 0, 0, 0, 0 }, 0
for i = 1, n do
  if st then
    limit, window, used, total, last, expired, fts, fbefore, fcost, state = unpack(st[i], 1, 10)
  end
  local score = last < now and now or last + 1
  local after = record and used + cost or used
  local retry = 0
  if cost > limit then
    retry = -1
  elseif not allowed and after + cost > limit then
    -- Over limit - cost: the recorded attempt itself when it alone is too much, else a stored entry.
    local over = limit - cost
    local ts = score
    if not (record and cost > over) then
      if record then
        over = over - cost
      end
      -- The entries from the head to the first live one sum to used > over; when the newer ones
      -- sum to at most over, that first one decides, and its time came with the head.
      if used - fcost <= over then
        ts = fts
      else
        if not at then
          at, deciding = helpers()
        end
        ts = deciding(KEYS[i], total, expired, over, now)
        if not ts then
          return redis.error_reply('CORRUPT key ' .. i .. ' (log): an entry not written by this script')
        end
      end
    end
    -- (v + -v % 1000) / 1000 is ceil(v / 1000) for an integer v, without a C call.
    local v = ts + window - now
    retry = (v + -v % 1000) / 1000
  end
  local newest = record and score or (state == 1 and last)
  local reset = 0
  if newest then
    reset = newest + window - now
    reset = (reset + -reset % 1000) / 1000
  end
  if wait >= 0 then
    wait = (retry < 0) and -1 or (retry > wait and retry or wait)
  end
  reply[4 * i], reply[4 * i + 1], reply[4 * i + 2], reply[4 * i + 3] =
    limit, after < limit and limit - after or 0, retry, reset
end
reply[3] = wait

if record and not peek then
  for i = 1, n do
    if st then
      local s = st[i]
      limit, window, total, last = s[1], s[2], s[4], s[5]
      expired, fts, fbefore, state = s[6], s[7], s[8], s[10]
    end
    local key = KEYS[i]
    local score = last < now and now or last + 1
    if state >= 2 then
      -- Nothing in it counts any more: free it whole, off the main thread.
      redis.call('UNLINK', key)
    elseif expired > 0 then
      redis.call('LTRIM', key, 0, -1 - (expired < 64 and expired or 64))
    end
    -- The first entry in the window after this write: the one found above, or this one.
    if state ~= 1 then
      fts, fbefore = score, total
    end
    local entry = struct.pack('<Bddddd', 2, score, (total + cost) % M, cost, fts, fbefore)
    local len = redis.call('LPUSH', key, entry)
    if len > limit then
      redis.call('LTRIM', key, 0, limit - 1)
    end
    -- The key expires between window + slack and window + 2 slack after its newest entry, and
    -- only the first write of each slack-long period sets it: entries of one period share it.
    local window_ms = window / 1000
    -- Integers only: (x - x % d) / d is floor(x / d), without a C call.
    local slack = (window_ms - window_ms % 8) / 8
    slack = slack > 10000 and 10000 or (slack < 1 and 1 or slack)
    local ends = (score - score % 1000) / 1000 + window_ms
    local period = (ends - ends % slack) / slack
    local before = (last - last % 1000) / 1000 + window_ms
    if state ~= 1 or (before - before % slack) / slack ~= period then
      -- A number, not a string: Redis formats integers below 10^17 exactly.
      redis.call('PEXPIREAT', key, (period + 2) * slack)
    end
  end
end
return reply
