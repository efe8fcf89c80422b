--- @name cache.delete
--- @summary Remove one entry and advance its generation, so a filler that read it before cannot write it back.
--- @key 1 entry cache:{<segment>}:e:<key> hash: v, g, d, t, n (see cache.get)
--- @arg 1 tombstone_ms integer>=1 how long the advanced generation is kept (cover the longest fill)
--- @returns integer 1 if an entry held data, else 0
--- @errors BADARG
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
  return redis.error_reply('BADARG tombstone_ms: must be an integer >= 1')
end
local had = redis.pcall('HEXISTS', KEYS[1], 'd')
if type(had) == 'table' then
  return had
end
-- Keep only the generation: cache.set compares it, so an in-flight fill of the old value fails.
redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HDEL', KEYS[1], 'v', 'd', 't', 'n')
local left = redis.call('PTTL', KEYS[1])
if left < 0 or left < tonumber(tombstone) then
  redis.call('PEXPIRE', KEYS[1], tombstone)
end
return had
