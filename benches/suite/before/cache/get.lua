--- @name cache.get
--- @summary Read an entry and its segment's version in one step; on a miss or near expiry, hand one caller a fill lease.
--- @key 1 version cache:{<segment>}:version the segment's version; absent means 0
--- @key 2 entry cache:{<segment>}:e:<key> hash: v (segment version), g (key generation), d (data), t (compute ms), n (negative)
--- @key 3 lease cache:{<segment>}:lease:<key> the fill lease's holder token
--- @arg 1 token string lease token of this caller (1..256 bytes; ignored when lease_ms is 0)
--- @arg 2 lease_ms integer>=0 lease length; 0 = plain read, never hand out a lease (writes nothing)
--- @arg 3 early integer>=0 XFetch draw: round(-beta * ln(random) * 1000); 0 = no early refresh
--- @returns array {status, data or nil, version, generation, lease_pttl}; status 0 miss, 1 hit, 2 hit + refresh lease is yours, 3 miss + fill lease is yours, 4 miss + another caller is filling (lease_pttl = ms it has left), 5 cached "not found"
--- @errors BADARG, CORRUPT
--- @mode write
--- @min-server 6.2

if #KEYS ~= 3 then
  return redis.error_reply('BADARG keys: expected 3 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 3 then
  return redis.error_reply('BADARG argc: expected 3 (got ' .. #ARGV .. ')')
end
local token, lease_ms, early = ARGV[1], ARGV[2], ARGV[3]
-- Patterns, not tonumber: tonumber takes 'inf', '0x10' and '1e3'. 15 digits stay exact.
if not string.find(lease_ms, '^%d+$') or #lease_ms > 15 then
  return redis.error_reply('BADARG lease_ms: must be an integer >= 0')
end
if not string.find(early, '^%d+$') or #early > 15 then
  return redis.error_reply('BADARG early: must be an integer >= 0')
end
lease_ms, early = tonumber(lease_ms), tonumber(early)
if lease_ms > 0 and (token == '' or #token > 256) then
  return redis.error_reply('BADARG token: must be 1..256 bytes when lease_ms > 0')
end

-- pcall on the first touch: Redis 6.2 wraps redis.call errors ("ERR Error running script"),
-- the pcall error table hands Redis' own WRONGTYPE back unchanged on every version.
local version = redis.pcall('GET', KEYS[1])
if type(version) == 'table' then
  return version
end
version = version or '0'
local e = redis.pcall('HMGET', KEYS[2], 'v', 'g', 'd', 't', 'n')
if e.err then
  return e
end
local gen = e[2] or '0'
if not string.find(version, '^%d+$') or not string.find(gen, '^%d+$') then
  return redis.error_reply('CORRUPT version or generation is not an integer')
end

-- Takes the lease (SET NX), or finds it already ours (a retried call): the lease is the single
-- flight, so only its holder computes while everyone else is served or waits.
local function take_lease()
  if redis.call('SET', KEYS[3], token, 'NX', 'PX', lease_ms) then
    return true
  end
  return redis.call('GET', KEYS[3]) == token
end

-- The entry counts only if written under the current version: a bump makes every older entry a
-- miss at once, with no scan.
if e[1] == version and e[3] then
  if e[5] == '1' then
    return {5, false, tonumber(version), tonumber(gen), 0}
  end
  if lease_ms > 0 and early > 0 then
    -- XFetch (Vattani et al., VLDB 2015): refresh early when delta * beta * -ln(rand) >= ttl left.
    -- The random draw comes from the caller so that the script stays deterministic.
    local left = redis.call('PTTL', KEYS[2])
    if left >= 0 and (tonumber(e[4]) or 0) * early / 1000 >= left and take_lease() then
      return {2, e[3], tonumber(version), tonumber(gen), lease_ms}
    end
  end
  return {1, e[3], tonumber(version), tonumber(gen), 0}
end

if lease_ms == 0 then
  return {0, false, tonumber(version), tonumber(gen), 0}
end
local lease = redis.pcall('GET', KEYS[3])
if type(lease) == 'table' then
  return lease
end
if take_lease() then
  return {3, false, tonumber(version), tonumber(gen), lease_ms}
end
return {4, false, tonumber(version), tonumber(gen), redis.call('PTTL', KEYS[3])}
