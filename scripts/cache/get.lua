--- @name cache.get
--- @summary Read an entry and its segment's version in one step; on a miss or near expiry, hand one caller a fill lease.
--- @key 1 version cache:{<segment>}:version the segment's version; absent means 0 (see cache.bump for its lifetime)
--- @key 2 entry cache:{<segment>}:e:<key> hash: v (segment version), g (key generation), d (data), t (compute ms), n (negative); expires after the ttl_ms of cache.set, or the tombstone_ms of cache.delete
--- @key 3 lease cache:{<segment>}:lease:<key> the fill lease's holder token; expires after lease_ms
--- @arg 1 token string lease token of this caller (1..256 bytes; ignored when lease_ms is 0)
--- @arg 2 lease_ms integer>=0 lease length; 0 = plain read, never hand out a lease (writes nothing); at most 999999999999999
--- @arg 3 early integer>=0 XFetch draw: round(-beta * ln(random) * 1000); 0 = no early refresh; at most 999999999999999
--- @returns array {status, data or nil, version, generation, lease_pttl}; status 0 miss, 1 hit, 2 hit + refresh lease is yours, 3 miss + fill lease is yours, 4 miss + another caller is filling (lease_pttl = ms it has left), 5 cached "not found"
--- @errors BADARG, CORRUPT (version or generation not an integer 0..2^53-1)
--- @complexity O(1): at most 6 commands
--- @mode write
--- @min-server 6.2

if #KEYS ~= 3 then
  return redis.error_reply('BADARG keys: expected 3 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 3 then
  return redis.error_reply('BADARG argc: expected 3 (got ' .. #ARGV .. ')')
end
local token, lease_ms, early = ARGV[1], ARGV[2], ARGV[3]
local find, tonumber = string.find, tonumber
-- Patterns, not tonumber alone: tonumber takes 'inf', '0x10' and '1e3'. 15 digits stay exact.
-- '0' (a plain read, no early refresh) skips both: each library call is a measurable part of a hit.
if lease_ms == '0' then
  lease_ms = 0
elseif find(lease_ms, '^%d+$') and #lease_ms <= 15 then
  lease_ms = tonumber(lease_ms)
else
  return redis.error_reply('BADARG lease_ms: must be an integer 0..999999999999999')
end
if early == '0' then
  early = 0
elseif find(early, '^%d+$') and #early <= 15 then
  early = tonumber(early)
else
  return redis.error_reply('BADARG early: must be an integer 0..999999999999999')
end
if lease_ms > 0 and (token == '' or #token > 256) then
  return redis.error_reply('BADARG token: must be 1..256 bytes when lease_ms > 0')
end

-- pcall on the first touch: Redis 6.2 wraps redis.call errors ("ERR Error running script"),
-- the pcall error table hands Redis' own WRONGTYPE back unchanged on every version.
local version = redis.pcall('GET', KEYS[1])
if type(version) == 'table' then
  return version
end
-- t (compute ms) only matters for an early refresh: not read on the common path, each field
-- read costs about a quarter of a plain script call.
local e = redis.pcall('HMGET', KEYS[2], 'v', 'g', 'd', 'n')
if e.err then
  return e
end
local gen = e[2] or '0'
version = version or '0'
-- Versions and generations stay below 2^53 (exact doubles): anything else was not written here.
-- Both '0' (never bumped, never deleted: the usual case) needs no pattern.
local v, g = 0, 0
if version ~= '0' or gen ~= '0' then
  if #version > 16 or #gen > 16 or not find(version .. ':' .. gen, '^%d+:%d+$') then
    return redis.error_reply('CORRUPT version or generation: not an integer 0..9007199254740991')
  end
  v, g = tonumber(version), tonumber(gen)
  if v > 9007199254740991 or g > 9007199254740991 then
    return redis.error_reply('CORRUPT version or generation: not an integer 0..9007199254740991')
  end
end

-- Takes the lease (SET NX), or finds it already ours (a retried call): the lease is the single
-- flight, so only its holder computes while everyone else is served or waits. SET NX writes
-- nothing when the key exists, whatever its type; the pcall'd GET then reports a wrong type.
-- Made only for calls that may take one.
local take_lease
if lease_ms > 0 then
  take_lease = function()
    if redis.call('SET', KEYS[3], token, 'NX', 'PX', lease_ms) then
      return true
    end
    return redis.pcall('GET', KEYS[3])
  end
end

-- The entry counts only if written under the current version: a bump makes every older entry a
-- miss at once, with no scan.
if e[1] == version and e[3] then
  if e[4] == '1' then
    return {5, false, v, g, 0}
  end
  if lease_ms > 0 and early > 0 then
    -- XFetch (Vattani et al., VLDB 2015): refresh early when delta * beta * -ln(rand) >= ttl left.
    -- The random draw comes from the caller so that the script stays deterministic.
    local left = redis.call('PTTL', KEYS[2])
    if left >= 0 and (tonumber(redis.call('HGET', KEYS[2], 't')) or 0) * early / 1000 >= left then
      local mine = take_lease()
      if type(mine) == 'table' then
        return mine
      end
      if mine == true or mine == token then
        return {2, e[3], v, g, lease_ms}
      end
    end
  end
  return {1, e[3], v, g, 0}
end

if lease_ms == 0 then
  return {0, false, v, g, 0}
end
local lease = redis.pcall('GET', KEYS[3])
if type(lease) == 'table' then
  return lease
end
if lease == token or (not lease and take_lease()) then
  return {3, false, v, g, lease_ms}
end
return {4, false, v, g, redis.call('PTTL', KEYS[3])}
