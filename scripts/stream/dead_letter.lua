--- @name stream.dead_letter
--- @summary Move one pending entry to the dead-letter stream and ack it in one step; only ack it when its data is gone.
--- @key 1 stream stream:{<name>} the source stream, holding the consumer group
--- @key 2 dead stream:{<name>}:dead the dead-letter stream (same hash tag); never expires (it is the record of failed entries, kept until someone handles them); approximately dead_maxlen entries at most, unbounded when dead_maxlen is 0
--- @arg 1 group string consumer group (1..1024 bytes)
--- @arg 2 consumer string the consumer that must own the pending entry (1..1024 bytes)
--- @arg 3 id stream-id the entry's ID, <ms>-<seq>, each part 0..18446744073709551615
--- @arg 4 reason string why the entry failed (at most 65536 bytes, may be empty)
--- @arg 5 dead_maxlen integer>=0 approximate MAXLEN kept on the dead-letter stream; 0 = unbounded (at most 15 digits)
--- @returns array {status, dead-letter ID or '', deliveries (capped at 2^53-1)}: 1 moved and acked; 2 data trimmed or deleted, acked only; 0 not pending for this consumer, nothing done
--- @errors BADARG, NOGROUP, TOOBIG (NOGROUP is Redis' own: no such key or consumer group; TOOBIG: the entry has more than 1000 fields, more than one call copies within its time bound)
--- @complexity O(f) for an entry of f fields (at most 1000: about 1 ms of server time), plus O(log n) stream lookups: 4 commands
--- @mode write
--- @min-server 6.2

-- The dead-letter entry carries, in this order: dead:id, dead:reason, dead:deliveries, dead:group,
-- dead:consumer, then every field/value pair of the original entry. The source entry is kept (the
-- stream's own trimming removes it); acking it takes it out of the group's pending list.

if #KEYS ~= 2 then
  return redis.error_reply('BADARG keys: expected 2 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 5 then
  return redis.error_reply('BADARG argc: expected 5 (got ' .. #ARGV .. ')')
end
local group, consumer, id, reason, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if group == '' or #group > 1024 then
  return redis.error_reply('BADARG group: must be 1..1024 bytes')
end
if consumer == '' or #consumer > 1024 then
  return redis.error_reply('BADARG consumer: must be 1..1024 bytes')
end
-- A full ID only: a bare '<ms>' would be read by XRANGE as a range of many entries.
-- Each part is an unsigned 64-bit integer: Redis would answer "ERR Invalid stream ID" past 2^64-1.
-- Up to 19 digits a part always fits (the usual case: one pattern, no more).
local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
if not ms or #id > 83 then
  return redis.error_reply('BADARG id: must be a stream ID <ms>-<seq>, each part 0..18446744073709551615')
end
if #ms > 19 or #seq > 19 then
  local function u64(part)
    part = string.match(part, '^0*(%d.*)$')
    return #part < 20 or (#part == 20 and part <= '18446744073709551615')
  end
  if not u64(ms) or not u64(seq) then
    return redis.error_reply('BADARG id: must be a stream ID <ms>-<seq>, each part 0..18446744073709551615')
  end
end
if #reason > 65536 then
  return redis.error_reply('BADARG reason: must be at most 65536 bytes')
end
-- A pattern, not tonumber: tonumber takes 'inf', '0x10' and '1e3'.
if maxlen ~= '0' and not string.find(maxlen, '^[1-9]%d*$') or #maxlen > 15 then
  return redis.error_reply('BADARG dead_maxlen: must be an integer 0..999999999999999')
end

-- pcall on the first touch of a key: Redis 6.2 wraps an error raised by redis.call in
-- "ERR Error running script ...", while returning the pcall error table hands Redis' own
-- reply (WRONGTYPE, NOGROUP) back unchanged on every version.
local pending = redis.pcall('XPENDING', KEYS[1], group, id, id, 1)
if pending.err then
  return pending
end
-- Only the owner moves it: an entry another consumer claimed meanwhile is theirs to finish, and
-- an entry already acked (or dead-lettered by a concurrent call) must not be copied twice.
local owned = pending[1]
if type(owned) ~= 'table' or owned[2] ~= consumer then
  return {0, '', 0}
end
-- A count set with XCLAIM RETRYCOUNT can exceed what a Lua double (and so the reply) holds exactly.
-- XPENDING answers it as an integer: a Lua number already.
local deliveries = tonumber(owned[4]) or 0
if deliveries > 9007199254740991 then
  deliveries = 9007199254740991
end

local range = redis.call('XRANGE', KEYS[1], id, id)
local entry = range[1]
if type(entry) ~= 'table' or type(entry[2]) ~= 'table' then
  -- Trimmed or deleted: nothing left to keep, only the pending reference to clear.
  redis.call('XACK', KEYS[1], group, id)
  return {2, '', deliveries}
end
-- Copying is O(fields) while the server serves no one: refuse large entries before writing
-- anything (unpack() would also fail past ~8000 values, Lua's C stack).
local fields = entry[2]
if #fields > 2000 then
  return redis.error_reply('TOOBIG entry: ' .. #fields / 2 .. ' fields, one call copies at most 1000')
end

-- The first write: when it fails (the dead key holds another type), nothing was written yet.
-- The fields go straight to XADD (unpack as the last argument), no table is built.
local count = string.format('%d', deliveries)
local dead
if maxlen == '0' then
  dead = redis.pcall('XADD', KEYS[2], '*', 'dead:id', id, 'dead:reason', reason, 'dead:deliveries', count,
    'dead:group', group, 'dead:consumer', consumer, unpack(fields))
else
  dead = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'dead:id', id, 'dead:reason', reason,
    'dead:deliveries', count, 'dead:group', group, 'dead:consumer', consumer, unpack(fields))
end
if type(dead) == 'table' and dead.err then
  return dead
end
redis.call('XACK', KEYS[1], group, id)
return {1, dead, deliveries}
