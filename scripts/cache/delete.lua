--- @name cache.delete
--- @summary Remove one entry and advance its generation, so a filler that read it before cannot write it back.
--- @key 1 entry cache:{<segment>}:e:<key> hash: v, g, d, t, n (see cache.get); after a delete only g is left, kept at least tombstone_ms
--- @arg 1 tombstone_ms integer>=1 how long the advanced generation is kept (cover the longest fill); at most 999999999999999
--- @returns integer 1 if an entry held data, else 0
--- @errors BADARG, CORRUPT (the generation is not an integer 0..2^53-2)
--- @complexity O(1): at most 5 commands
--- @mode write
--- @min-server 6.2

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 1 then
  return redis.error_reply('BADARG argc: expected 1 (got ' .. #ARGV .. ')')
end
local tombstone = ARGV[1]
if not string.find(tombstone, '^[1-9]%d*$') or #tombstone > 15 then
  return redis.error_reply('BADARG tombstone_ms: must be an integer 1..999999999999999')
end
-- pcall on the first touch: Redis' own WRONGTYPE goes back unchanged on 6.2 and 7.
local e = redis.pcall('HMGET', KEYS[1], 'g', 'd')
if e.err then
  return e
end
-- Checked before writing: HINCRBY would raise on a foreign value, and past 2^53 a generation is
-- no longer exact in the Lua double that cache.get and cache.set compare.
local gen = e[1] or '0'
if not string.find(gen, '^%d+$') or #gen > 16 or tonumber(gen) >= 9007199254740991 then
  return redis.error_reply('CORRUPT generation: not an integer 0..9007199254740990')
end
-- Keep only the generation: cache.set compares it, so an in-flight fill of the old value fails.
redis.call('HSET', KEYS[1], 'g', string.format('%d', tonumber(gen) + 1))
redis.call('HDEL', KEYS[1], 'v', 'd', 't', 'n')
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(tombstone) then
  redis.call('PEXPIRE', KEYS[1], tombstone)
end
return e[2] and 1 or 0
