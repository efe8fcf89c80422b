--- @name stream.retire_consumer
--- @summary Delete a consumer from its group only if it owns no pending entries, in one step.
--- @key 1 stream stream:{<name>} the stream holding the consumer group
--- @arg 1 group string consumer group (1..1024 bytes)
--- @arg 2 consumer string the consumer to retire (1..1024 bytes)
--- @returns array {retired 1|0, pending entries it still owns (0 when retired)}
--- @errors BADARG
--- @mode write
--- @min-server 6.2

-- XGROUP DELCONSUMER discards the consumer's pending entries (they would never be redelivered),
-- so the check and the delete must be one atomic step: a plain check-then-delete lets a consumer
-- still reading under that name acquire entries in between.

if #KEYS ~= 1 then
  return redis.error_reply('BADARG keys: expected 1 (got ' .. #KEYS .. ')')
end
if #ARGV ~= 2 then
  return redis.error_reply('BADARG argc: expected 2 (got ' .. #ARGV .. ')')
end
local group, consumer = ARGV[1], ARGV[2]
if group == '' or #group > 1024 then
  return redis.error_reply('BADARG group: must be 1..1024 bytes')
end
if consumer == '' or #consumer > 1024 then
  return redis.error_reply('BADARG consumer: must be 1..1024 bytes')
end

-- pcall: Redis' own error (WRONGTYPE, NOGROUP) goes back unchanged on 6.2 and 7.
local summary = redis.pcall('XPENDING', KEYS[1], group)
if summary.err then
  return summary
end
-- Summary form: {count, min, max, {{consumer, count}, ...}}; the list is nil when nothing is pending.
for _, row in ipairs(summary[4] or {}) do
  if row[1] == consumer then
    local pending = tonumber(row[2])
    if pending > 0 then
      return {0, pending}
    end
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, consumer)
return {1, 0}
