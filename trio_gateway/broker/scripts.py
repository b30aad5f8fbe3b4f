"""The Lua scripts the Redis broker runs: each is one atomic step on Redis.

Owns the script text and the layout of their arguments and replies (envelope.py names the
keys). Atomicity is the point: a publish round assigns offsets, stores history and publishes
with no other client's command in between, so every instance sees offsets in the order they
were assigned, and a history fetch sees a consistent (epoch, offset, entries) triple.
"""

from __future__ import annotations

# ARGV: prefix, history_size, history_ttl_ms, log_ttl_s, state_ttl_ms, epoch_candidate,
#       id_base, count, idempotency_ttl_ms, then per publication:
#       idempotency_key ("" for none), key_count, key..., topic ("" for none),
#       retain ("", "set", "del"), retain_key, retain_state, control, exclude_user,
#       exclude_client ("" for none), body
# Returns, per publication, {duplicate (0 or 1), offset...}: a duplicate (its idempotency key
# was published within the TTL, by any instance) is not published again and carries the
# first one's offsets, kept at `<prefix>idem:<key>` as a JSON list.
PUBLISH = """
local prefix = ARGV[1]
local history_size = tonumber(ARGV[2])
local history_ttl = tonumber(ARGV[3])
local log_ttl = tonumber(ARGV[4])
local state_ttl = tonumber(ARGV[5])
local candidate = ARGV[6]
local id_base = ARGV[7]
local count = tonumber(ARGV[8])
local idempotency_ttl = tonumber(ARGV[9])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local at = 10
local result = {}
for n = 1, count do
  local idempotency = ARGV[at]
  local key_count = tonumber(ARGV[at + 1])
  at = at + 2
  local keys = {}
  for k = 1, key_count do
    keys[k] = ARGV[at]
    at = at + 1
  end
  local topic, retain, retain_key, retain_state = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local control, exclude_user, exclude_client = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local body = ARGV[at + 7]
  at = at + 8
  local seen = false
  if idempotency ~= '' then
    seen = redis.call('GET', prefix .. 'idem:' .. idempotency)
  end
  if seen then
    local entry = {1}
    for _, offset in ipairs(cjson.decode(seen)) do
      entry[#entry + 1] = offset
    end
    result[n] = entry
  else
    local offsets, epochs = {}, {}
    for k = 1, key_count do
      local log = prefix .. 'log:' .. keys[k]
      if redis.call('HSETNX', log, 'epoch', candidate) == 1 then
        -- A new epoch: whatever history is left belongs to the old one.
        redis.call('DEL', prefix .. 'hist:' .. keys[k])
        epochs[k] = candidate
      else
        epochs[k] = redis.call('HGET', log, 'epoch')
      end
      offsets[k] = redis.call('HINCRBY', log, 'offset', 1)
      redis.call('EXPIRE', log, log_ttl)
    end
    local header = {id_base .. ':' .. n, keys, offsets, now, topic, control, exclude_user,
      exclude_client, epochs}
    local envelope = cjson.encode(header) .. '\\n' .. body
    for k = 1, key_count do
      local history = prefix .. 'hist:' .. keys[k]
      redis.call('RPUSH', history, envelope)
      redis.call('LTRIM', history, -history_size, -1)
      redis.call('PEXPIRE', history, history_ttl)
    end
    if retain == 'set' then
      redis.call('SET', prefix .. 'state:' .. retain_key, retain_state, 'PX', state_ttl)
    elseif retain == 'del' then
      redis.call('DEL', prefix .. 'state:' .. retain_key)
    end
    for k = 1, key_count do
      redis.call('PUBLISH', prefix .. keys[k], envelope)
    end
    if idempotency ~= '' then
      -- NX: inside this script nobody can have set it since the GET; it states the intent.
      redis.call('SET', prefix .. 'idem:' .. idempotency, cjson.encode(offsets), 'NX', 'PX',
        idempotency_ttl)
    end
    local entry = {0}
    for k = 1, key_count do
      entry[k + 1] = offsets[k]
    end
    result[n] = entry
  end
end
return result
"""

# ARGV: prefix, key, since_offset ("" for none), since_epoch, epoch_candidate, log_ttl_s,
#       want_state ("1" or ""), marker channel, marker
# Returns {epoch, offset, now_ms, entries after since_offset (when the epoch matches), state}.
# Last, it PUBLISHes the marker on the calling instance's own channel: in that instance's
# subscriber stream the marker follows every message published before this read.
FETCH = """
local prefix, key = ARGV[1], ARGV[2]
local log = prefix .. 'log:' .. key
if redis.call('HSETNX', log, 'epoch', ARGV[5]) == 1 then
  redis.call('DEL', prefix .. 'hist:' .. key)
end
redis.call('EXPIRE', log, tonumber(ARGV[6]))
local epoch = redis.call('HGET', log, 'epoch')
local offset = tonumber(redis.call('HGET', log, 'offset') or '0')
local entries = {}
if ARGV[3] ~= '' and ARGV[4] == epoch then
  local missed = offset - tonumber(ARGV[3])
  if missed > 0 then
    entries = redis.call('LRANGE', prefix .. 'hist:' .. key, -missed, -1)
  end
end
local state = false
if ARGV[7] == '1' then
  state = redis.call('GET', prefix .. 'state:' .. key)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('PUBLISH', ARGV[8], ARGV[9])
return {epoch, offset, now, entries, state}
"""

# ARGV: prefix, marker channel, marker, key... Returns {epoch or false, offset} per key, without
# creating a log, then PUBLISHes the marker as FETCH does.
POSITIONS = """
local prefix = ARGV[1]
local result = {}
for n = 4, #ARGV do
  local log = prefix .. 'log:' .. ARGV[n]
  local epoch = redis.call('HGET', log, 'epoch')
  result[#result + 1] = {epoch, tonumber(redis.call('HGET', log, 'offset') or '0')}
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return result
"""

# ARGV: prefix, key. Returns the retained state or nil.
STATE = """
return redis.call('GET', ARGV[1] .. 'state:' .. ARGV[2])
"""
