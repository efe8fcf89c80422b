--- @name cache.set
--- @summary Write an entry only if the segment version and the key's generation are still those the caller read.
--- @key 1 version cache:{<segment>}:version the segment's version; absent means 0 (see cache.bump for its lifetime)
--- @key 2 entry cache:{<segment>}:e:<key> hash: v, g, d, t, n (see cache.get); expires after ttl_ms
--- @key 3 lease cache:{<segment>}:lease:<key> the fill lease, released here if this caller holds it
--- @arg 1 version integer>=0 the version cache.get returned (0..9007199254740991)
--- @arg 2 generation integer>=0 the generation cache.get returned (0..9007199254740991)
--- @arg 3 data bytes the value (ignored when negative is 1)
--- @arg 4 ttl_ms integer>=1 how long the entry lives (at most 999999999999999)
--- @arg 5 delta_ms integer>=0 how long the value took to compute, drives early refresh (at most 999999999999999)
--- @arg 6 token string the caller's lease token, or empty
--- @arg 7 negative 0|1 1 = cache "not found"
--- @returns array {stored 1|0, current version, current generation}
--- @errors BADARG, CORRUPT (version or generation not an integer 0..2^53-1)
--- @complexity O(1) plus the size of data: at most 7 commands
--- @mode write
--- @min-server 6.2

if #KEYS ~= 3 then
  return redis.error_reply('BADARG keys: expected 3 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 7 then
  return redis.error_reply('BADARG argc: expected 7 (got ' .. #ARGV .. ')')
end
local version, gen, data, ttl, delta, token, negative =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. No leading zeros, so equal
-- numbers are equal strings; below 2^53 every integer is an exact double.
local function int(x, max)
  return (x == '0' or string.find(x, '^[1-9]%d*$')) and #x <= 16 and tonumber(x) <= max
end
if not int(version, 9007199254740991) then
  return redis.error_reply('BADARG version: must be an integer 0..9007199254740991')
end
if not int(gen, 9007199254740991) then
  return redis.error_reply('BADARG generation: must be an integer 0..9007199254740991')
end
if ttl == '0' or not int(ttl, 999999999999999) then
  return redis.error_reply('BADARG ttl_ms: must be an integer 1..999999999999999')
end
if not int(delta, 999999999999999) then
  return redis.error_reply('BADARG delta_ms: must be an integer 0..999999999999999')
end
if negative ~= '0' and negative ~= '1' then
  return redis.error_reply('BADARG negative: must be 0 or 1')
end

local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' then
  return current
end
current = current or '0'
local e_gen = redis.pcall('HGET', KEYS[2], 'g')
if type(e_gen) == 'table' then
  return e_gen
end
e_gen = e_gen or '0'
local lease = redis.pcall('GET', KEYS[3])
if type(lease) == 'table' then
  return lease
end
-- What we stored is canonical (no leading zeros); anything else was not written here.
if not int(current, 9007199254740991) or not int(e_gen, 9007199254740991) then
  return redis.error_reply('CORRUPT version or generation: not an integer 0..9007199254740991')
end
-- Done with the lease either way: a refused filler must not keep others waiting.
if token ~= '' and lease == token then
  redis.call('DEL', KEYS[3])
end
-- Compare-and-set: a filler that read before a bump or a delete would write stale data back.
if current ~= version or e_gen ~= gen then
  return {0, tonumber(current), tonumber(e_gen)}
end
if negative == '1' then
  data = ''
end
redis.call('HSET', KEYS[2], 'v', version, 'g', gen, 'd', data, 't', delta, 'n', negative)
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, tonumber(current), tonumber(e_gen)}
