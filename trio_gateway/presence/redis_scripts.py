"""The Lua scripts of presence in Redis: each is one atomic step, so instances never race.

Names under `<prefix>` (the `redis_prefix` setting); a topic never holds ':', so none of
these can be a subscription key's channel or a broker key:
- hash `<prefix>presence:<topic>`: field user id -> JSON object {instance: [connections,
  info JSON text]}, every instance's share of that user on that topic;
- hash `<prefix>presence-user:<user>`: field `t:<topic>` for each topic the user is on, and
  `status` when set; gone once the user is on no topic (a status set then lasts the TTL);
- sorted set `<prefix>presence-leases`: instance -> when its shares expire (ms), renewed by
  the instance; a lease that ran out is swept;
- set `<prefix>presence-held:<instance>`: JSON [topic, user] of each share of the instance,
  what a sweep removes;
- string `<prefix>typing:<topic>:<user>`: when the indicator lapses (ms); it lives twice
  that long, so the first instance to find it lapsed removes it and announces the stop once;
- channel `<prefix>presence:bus`: ["c", topic, [users]] when shares or statuses changed,
  ["t", topic, user, "start"|"stop"] for typing.

Times are Redis's clock (TIME), never an instance's.
"""

from __future__ import annotations

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Removes (n == '') or sets one instance's share of a user on a topic; keeps the user's hash
# in step; notes the topic in `changed` (topic -> users) when anything changed.
_SHARE = """
local function share(prefix, inst, topic, user, n, info, changed, order)
  local tkey = prefix .. 'presence:' .. topic
  local ukey = prefix .. 'presence-user:' .. user
  local raw = redis.call('HGET', tkey, user)
  local shares = {}
  if raw then shares = cjson.decode(raw) end
  local old = shares[inst]
  if n == '' then
    if old == nil then return end
    shares[inst] = nil
  else
    if old ~= nil and old[1] == tonumber(n) and old[2] == info then return end
    shares[inst] = {tonumber(n), info}
  end
  if next(shares) == nil then
    redis.call('HDEL', tkey, user)
    redis.call('HDEL', ukey, 't:' .. topic)
    local left = redis.call('HLEN', ukey)
    if left == 0 or (left == 1 and redis.call('HEXISTS', ukey, 'status') == 1) then
      redis.call('DEL', ukey)
    end
  else
    redis.call('HSET', tkey, user, cjson.encode(shares))
    redis.call('HSET', ukey, 't:' .. topic, '1')
    redis.call('PERSIST', ukey)
  end
  if changed[topic] == nil then
    changed[topic] = {}
    table.insert(order, topic)
  end
  table.insert(changed[topic], user)
end
"""

_ANNOUNCE = """
local function announce(prefix, changed, order)
  for _, topic in ipairs(order) do
    redis.call('PUBLISH', prefix .. 'presence:bus', cjson.encode({'c', topic, changed[topic]}))
  end
end
"""

# ARGV: prefix, instance, lease_ms, count, then per write: topic, user, connections ('' to
# remove), info JSON text. Renews the instance's lease.
PUT = (
    _NOW
    + _SHARE
    + _ANNOUNCE
    + """
local prefix, inst, lease, count = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', prefix .. 'presence-leases', now + lease, inst)
local held = prefix .. 'presence-held:' .. inst
local changed, order = {}, {}
local at = 5
for _ = 1, count do
  local topic, user, n, info = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  at = at + 4
  share(prefix, inst, topic, user, n, info, changed, order)
  local pair = cjson.encode({topic, user})
  if n == '' then redis.call('SREM', held, pair) else redis.call('SADD', held, pair) end
end
announce(prefix, changed, order)
return 1
"""
)

# ARGV: prefix, instance, lease_ms. Returns 1 if the lease was still held, 0 if it was gone
# (swept, or Redis lost its data): the instance must write its shares again.
RENEW = (
    _NOW
    + """
local leases = ARGV[1] .. 'presence-leases'
local held = redis.call('ZSCORE', leases, ARGV[2])
redis.call('ZADD', leases, now + tonumber(ARGV[3]), ARGV[2])
if held then return 1 end
return 0
"""
)

# ARGV: prefix. Removes every share of each instance whose lease ran out, announcing what
# changed once. Returns how many instances were swept.
SWEEP = (
    _NOW
    + _SHARE
    + _ANNOUNCE
    + """
local prefix = ARGV[1]
local leases = prefix .. 'presence-leases'
local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
local changed, order = {}, {}
for _, inst in ipairs(dead) do
  local held = prefix .. 'presence-held:' .. inst
  for _, pair in ipairs(redis.call('SMEMBERS', held)) do
    local entry = cjson.decode(pair)
    share(prefix, inst, entry[1], entry[2], '', '', changed, order)
  end
  redis.call('DEL', held)
  redis.call('ZREM', leases, inst)
end
announce(prefix, changed, order)
return #dead
"""
)

# ARGV: prefix, user, status, ttl_ms. Announces the change on every topic the user is on.
STATUS = (
    _ANNOUNCE
    + """
local prefix, user = ARGV[1], ARGV[2]
local ukey = prefix .. 'presence-user:' .. user
redis.call('HSET', ukey, 'status', ARGV[3])
local changed, order = {}, {}
for _, field in ipairs(redis.call('HKEYS', ukey)) do
  if string.sub(field, 1, 2) == 't:' then
    local topic = string.sub(field, 3)
    changed[topic] = {user}
    table.insert(order, topic)
  end
end
if #order == 0 then redis.call('PEXPIRE', ukey, tonumber(ARGV[4])) end
announce(prefix, changed, order)
return 1
"""
)

# ARGV: prefix, topic, user... Returns per user: its shares' JSON ('' for none) and its
# status ('' for none), flattened.
READ = """
local prefix, topic = ARGV[1], ARGV[2]
local tkey = prefix .. 'presence:' .. topic
local result = {}
for at = 3, #ARGV do
  local user = ARGV[at]
  local raw = redis.call('HGET', tkey, user)
  table.insert(result, raw or '')
  table.insert(result, redis.call('HGET', prefix .. 'presence-user:' .. user, 'status') or '')
end
return result
"""

# ARGV: prefix, topic. Returns per member: user, shares' JSON, status ('' for none).
MEMBERS = """
local prefix = ARGV[1]
local all = redis.call('HGETALL', prefix .. 'presence:' .. ARGV[2])
local result = {}
for at = 1, #all, 2 do
  local user = all[at]
  table.insert(result, user)
  table.insert(result, all[at + 1])
  table.insert(result, redis.call('HGET', prefix .. 'presence-user:' .. user, 'status') or '')
end
return result
"""

# ARGV: prefix, user. Returns the user's hash (HGETALL).
USER = """
return redis.call('HGETALL', ARGV[1] .. 'presence-user:' .. ARGV[2])
"""

# ARGV: prefix, topic, user, ttl_ms. Returns 1 when this started the indicator (announced),
# 0 when it extended a running one.
TYPING_START = (
    _NOW
    + """
local prefix, topic, user, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = prefix .. 'typing:' .. topic .. ':' .. user
local lapses = tonumber(redis.call('GET', key) or '0')
redis.call('SET', key, now + ttl, 'PX', 2 * ttl)
if lapses > now then return 0 end
redis.call('PUBLISH', prefix .. 'presence:bus', cjson.encode({'t', topic, user, 'start'}))
return 1
"""
)

# ARGV: prefix, topic, user. Announces the stop if the indicator was there.
TYPING_STOP = """
local prefix, topic, user = ARGV[1], ARGV[2], ARGV[3]
if redis.call('DEL', prefix .. 'typing:' .. topic .. ':' .. user) == 1 then
  redis.call('PUBLISH', prefix .. 'presence:bus', cjson.encode({'t', topic, user, 'stop'}))
end
return 1
"""

# ARGV: prefix, topic, user. Ends a lapsed indicator (announcing the stop) and returns -1,
# or returns the milliseconds a running one has left; -1 too when it is gone already.
TYPING_LAPSE = (
    _NOW
    + """
local prefix, topic, user = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'typing:' .. topic .. ':' .. user
local lapses = redis.call('GET', key)
if not lapses then return -1 end
if tonumber(lapses) > now then return tonumber(lapses) - now end
redis.call('DEL', key)
redis.call('PUBLISH', prefix .. 'presence:bus', cjson.encode({'t', topic, user, 'stop'}))
return -1
"""
)
