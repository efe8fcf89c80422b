--- @name ratelimit.sliding_window
--- @summary Exact sliding-window log for 1..N limits in one all-or-nothing call; weighted, peek, penalty.
--- @key 1.. log rl:{<subject>}:<name> list, newest entry first, one per limit; keys must be distinct and, with 2 or more, share one non-empty hash tag; holds at most limit entries; expires between window_ms + s and window_ms + 2s after its newest entry, s = min(window_ms / 8, 10000) rounded down, at least 1
--- @arg 1 cost integer>=1 weight of this request (at most 999999999999999)
--- @arg 2 flags integer 0..3 bit 1 = peek (dry run, read commands only), bit 2 = penalty (refusals count)
--- @arg 3.. limit integer>=1 most total cost admitted within the window (at most 10^12); give one key the same limit and window on every call
--- @arg 4.. window_ms integer>=1 window length in ms (at most 10^12)
--- @returns array {allowed, refused, retry_after_ms, then per limit: limit, remaining, retry_ms, reset_ms}
--- @errors BADARG, CORRUPT (a log entry this script did not write)
--- @complexity per key, on a log of n <= limit entries: usually 2 to 4 commands; a binary search of at most log2(n) + 2 LINDEX probes only when more than one entry left the window since the last write, or when refusing with unequal costs; each LINDEX walks at most n entries; a write removes at most 64 entries
--- @mode write
--- @min-server 6.2

-- Layout: a list, newest entry at the head, entry "<ts>:<cum>:<cost>:<fts>:<fbefore>" with ts =
-- server time in microseconds (strictly increasing, so a clock step back cannot reorder the log),
-- cum the running total of costs logged on the key (mod 10^15), and fts, fbefore the time and the
-- running total before the first entry that was in the window when this one was written. The
-- cost inside the window is one subtraction: total - fbefore, read from the head alone while that
-- first entry is still in the window; once it has left, the first live entry is the tail, or is
-- found from the tail. The log keeps the newest `limit` entries at most: those sum to >= limit already (every
-- cost is >= 1), so an older entry can only ever be seen beside them, when every request is
-- refused anyway and the deciding entry lies among them. A write drops at most 64 expired entries
-- from the tail, and a log whose entries have all left the window is unlinked (freed off the main
-- thread). A peek returns the same reply a real call would (dry run). Keys must be distinct: a key
-- given twice would be read and written twice, counting one request double. Before this layout
-- the log was a sorted set: such a key is unlinked on the first write, and read as empty.

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
-- Totals kept in a log stay below 2 * 10^12, far under M, so differences mod M are exact.
local M = 1e15
local corrupt

-- ts, cum, cost, fts, fbefore of an entry; nil for one this script did not write (or one far
-- ahead of now). Numbers of any length stay finite: the reply is computed mod M or from ts.
local function parse(e)
  local ts, cum, c, fts, fb = match(e, '^(%d+):(%d+):([1-9]%d*):(%d+):(%d+)$')
  if not ts or #e > 100 or ts - now > 1e15 or fts - ts > 0 then
    return nil
  end
  return ts + 0, cum + 0, c + 0, fts + 0, fb + 0
end
-- The entry m places from the head (0 = newest; negative from the tail), parsed. A missing or
-- foreign entry marks the key corrupt and reads as an entry at time 0.
local function at(i, m)
  local ts, cum, c = parse(redis.call('LINDEX', KEYS[i], m) or '')
  if not ts then
    corrupt = corrupt or i
    return 0, 0, 1
  end
  return ts, cum, c
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
  local s = { limit = limit, window = window * 1000, used = 0, total = 0, last = -1, expired = 0 }
  st[i] = s
  -- Entries at or before lo have left the window.
  local lo = now - s.window
  -- pcall on the first touch: Redis 6.2 wraps redis.call errors in "ERR Error running script",
  -- returning the pcall error table hands back Redis' own WRONGTYPE on every version.
  local head = redis.pcall('LINDEX', KEYS[i], 0)
  if type(head) == 'table' then
    if redis.call('TYPE', KEYS[i]).ok ~= 'zset' then
      return head
    end
    s.old = true
  elseif head then
    local tsn, cumn, _, fts, fbefore = parse(head)
    if not tsn then
      corrupt = corrupt or i
    elseif tsn <= lo then
      s.last, s.total, s.stale = tsn, cumn, true
    else
      s.last, s.total, s.live = tsn, cumn, true
      if fts <= lo then
        -- The first live entry has changed: usually the tail, or the one before it.
        local ts, cum, c = at(i, -1)
        if ts <= lo then
          local e = 1
          ts, cum, c = at(i, -2)
          if ts <= lo then
            -- More left the window since the last write: find the last expired one by halves.
            local hi = redis.call('LLEN', KEYS[i]) - 1
            e = 2
            while e < hi do
              local mid = math.floor((e + hi + 1) / 2)
              if at(i, -mid) <= lo then
                e = mid
              else
                hi = mid - 1
              end
            end
            ts, cum, c = at(i, -e - 1)
          end
          s.expired = e
        end
        fts, fbefore = ts, (cum - c) % M
      end
      s.fts, s.fbefore = fts, fbefore
      s.used = (cumn - fbefore) % M
    end
  end
  if cost > limit then
    never = (never > 0) and never or i
  elseif s.used + cost > limit and refused == 0 then
    refused = i
  end
end
if corrupt then
  return redis.error_reply('CORRUPT key ' .. corrupt .. ' (log): an entry not written by this script')
end
local allowed = never == 0 and refused == 0
-- A penalty records the refused attempt too, unless it can never fit.
local record = allowed or (penalty and never == 0)
local ceil, floor = math.ceil, math.floor

-- The newest stored entry that, with the entries after it, sums to more than `over`: when it
-- leaves the window, a request of this cost fits. Every cost is >= 1, so it lies at most `over`
-- entries from the head, and every entry further back qualifies too: read the bound and the entry
-- just newer (the answer at once when costs are equal), else search by halves.
local function deciding(i, s, over)
  -- The bound and the entry just newer, in one read (a list walk each).
  local pair = redis.call('LRANGE', KEYS[i], over > 0 and over - 1 or 0, over)
  local hi, ts
  local lo = 0
  if over > 0 and pair[2] then
    ts = parse(pair[2])
    local nts, cum, c = parse(pair[1])
    if not (ts and nts) then
      corrupt = corrupt or i
      return 0
    end
    if (s.total - cum + c) % M <= over then
      return ts
    end
    hi, ts = over - 1, nts
  elseif over == 0 and pair[1] then
    return parse(pair[1]) or 0
  else
    hi = math.min(over, redis.call('LLEN', KEYS[i]) - 1 - s.expired)
    ts = at(i, hi)
  end
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    local mts, cum, c = at(i, mid)
    if (s.total - cum + c) % M > over then
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
  local score = s.last < now and now or s.last + 1
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
  s.score = score
end
if corrupt then
  return redis.error_reply('CORRUPT key ' .. corrupt .. ' (log): an entry not written by this script')
end
reply[3] = wait

if record and not peek then
  for i = 1, n do
    local s = st[i]
    local total, window_ms = (s.total + cost) % M, s.window / 1000
    if s.old or s.stale then
      -- Nothing in it counts any more: free it whole, off the main thread.
      redis.call('UNLINK', KEYS[i])
    elseif s.expired > 0 then
      redis.call('LTRIM', KEYS[i], 0, -1 - (s.expired < 64 and s.expired or 64))
    end
    -- The first entry in the window after this write: the one found above, or this one.
    local fts, fbefore = s.fts, s.fbefore
    if not s.live then
      fts, fbefore = s.score, s.total
    end
    -- '%d', not tostring: tostring switches to exponent notation past 14 digits.
    local len = redis.call('LPUSH', KEYS[i], fmt('%d:%d:%d:%d:%d', s.score, total, cost, fts, fbefore))
    if len > s.limit then
      redis.call('LTRIM', KEYS[i], 0, s.limit - 1)
    end
    -- The key expires between window + slack and window + 2 slack after its newest entry, and
    -- only the first write of each slack-long period sets it: entries of one period share it.
    local slack = floor(window_ms / 8)
    slack = slack > 10000 and 10000 or (slack < 1 and 1 or slack)
    local period = floor((floor(s.score / 1000) + window_ms) / slack)
    if s.last < 0 or s.old or s.stale or floor((floor(s.last / 1000) + window_ms) / slack) ~= period then
      redis.call('PEXPIREAT', KEYS[i], fmt('%d', (period + 2) * slack))
    end
  end
end
return reply
