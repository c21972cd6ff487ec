"""The Lua scripts of :class:`~storekeeper.backends.redis.RedisStore`: each write of a key
is one script, so its record, the key index, the metadata indexes and the change stream
move together in one atomic step (Redis runs a script with nothing else in between).

A script never fails half-way: every check comes before the first write, so an error
reply (a conflict, a missing key) means nothing was written. Inside ``MULTI``/``EXEC``
(a transaction's commit) the scripts run without preconditions, which ``WATCH`` has
already settled.

The layout under the store's root (``{prefix}``), all of it built by the scripts from
the root they are given, so nothing a caller passes can name a key outside it:

- ``k:<key>``: the record, a hash: ``d`` inline data or ``b`` the chunk set's id (and
  ``h`` its chunk size), ``z`` size, ``m`` metadata JSON, ``v`` version, ``c`` created,
  ``t`` modified, ``x`` the index entries the record is listed under (JSON);
- ``w:<id>``: a staging hash holding a large inline value's ``d`` and ``z`` on its way
  into a record (written with an expiry in the same pipeline or ``MULTI`` as the
  script, which renames it over the record);
- ``K``: every key, a sorted set of score 0 read with ``ZRANGEBYLEX``;
- ``c:<id>``: a chunk set, a hash of chunk number to bytes; written with an expiry
  while it is staged, made permanent by the write that points a record at it, and
  given an expiry again (the grace period) when the record stops pointing at it, so
  values already read keep their data for a while;
- ``e:``, ``v:``, ``n:``, ``t:`` + name: the metadata indexes (see ``_redis_index``);
- ``X``: the change stream (``XADD ... MAXLEN ~``).
"""

from __future__ import annotations

__all__ = ["APPLY", "STATUS_CONFLICT", "STATUS_MISSING", "STATUS_OK", "STATUS_STAGING_GONE"]

STATUS_OK = 0
STATUS_CONFLICT = 1
STATUS_MISSING = 2
STATUS_STAGING_GONE = 3

# ARGV: 1 root, 2 key, 3 mode (set | data | meta | del), 4 if_exists ('' | '1' | '0'),
# 5 has if_version ('0' | '1'), 6 if_version, 7 new version, 8 now, 9 inline data,
# 10 chunk set id ('' when inline), 11 size, 12 chunk size, 13 metadata JSON,
# 14 index entries JSON, 15 origin, 16 event action, 17 stream length (0: no events),
# 18 grace seconds, 19 staging hash ('' when the data, if any, is in ARGV 9 or a chunk
# set; else the hash the client wrote the record's d and z into, which becomes the record).
# Returns {status, text}: ok -> the metadata JSON the key now holds (for a delete: held);
# conflict -> the current version ('' when missing); missing -> ''; staging hash gone -> ''.
APPLY = r"""
local root, key, mode = ARGV[1], ARGV[2], ARGV[3]
local rk = root .. 'k:' .. key
local old = redis.call('HMGET', rk, 'v', 'c', 'b', 'x', 'm')
local exists = old[1] ~= false
local tmp = ARGV[19]
local function refuse(status, text)
  if tmp ~= '' then redis.call('DEL', root .. tmp) end
  return {status, text}
end
if tmp ~= '' and redis.call('EXISTS', root .. tmp) == 0 then return {3, ''} end
local if_exists = ARGV[4]
if if_exists == '1' and not exists then return refuse(1, '') end
if if_exists == '0' and exists then return refuse(1, old[1]) end
if ARGV[5] == '1' and (not exists or old[1] ~= ARGV[6]) then return refuse(1, old[1] or '') end
if mode == 'del' and not exists then return {2, ''} end

local function entries(text, add, member)
  for _, e in ipairs(cjson.decode(text)) do
    local name = root .. e[2]
    if e[1] == 's' then
      if add then redis.call('SADD', name, key) else redis.call('SREM', name, key) end
    elseif e[1] == 'z' then
      if add then redis.call('ZADD', name, e[3], key) else redis.call('ZREM', name, key) end
    else
      local m = e[3] .. '\0' .. key
      if add then redis.call('ZADD', name, 0, m) else redis.call('ZREM', name, m) end
    end
  end
end

local grace = tonumber(ARGV[18])
if exists and old[3] and mode ~= 'meta' then
  redis.call('EXPIRE', root .. 'c:' .. old[3], grace)
end
if exists and mode ~= 'data' and old[4] then entries(old[4], false) end

local metadata = ARGV[13]
local action = ARGV[16]
if mode == 'del' then
  redis.call('DEL', rk)
  redis.call('ZREM', root .. 'K', key)
  metadata = old[5]
elseif tmp ~= '' then
  -- Large inline data never passes through the script (a long argument costs the
  -- server far more than the copy): the client wrote the new record's data fields to
  -- the staging hash tmp, which replaces the record whole.
  local fields = {'v', ARGV[7], 't', ARGV[8], 'c', (exists and old[2]) or ARGV[8]}
  if mode == 'data' then
    metadata = old[5] or '{}'
    table.insert(fields, 'x'); table.insert(fields, old[4] or '[]')
  else
    table.insert(fields, 'x'); table.insert(fields, ARGV[14])
    entries(ARGV[14], true)
  end
  table.insert(fields, 'm'); table.insert(fields, metadata)
  if not exists then redis.call('ZADD', root .. 'K', 0, key) end
  redis.call('RENAME', root .. tmp, rk)
  redis.call('PERSIST', rk)
  redis.call('HSET', rk, unpack(fields))
else
  local fields = {'v', ARGV[7], 't', ARGV[8]}
  if not exists then
    table.insert(fields, 'c'); table.insert(fields, ARGV[8])
    redis.call('ZADD', root .. 'K', 0, key)
  end
  if mode ~= 'meta' then
    table.insert(fields, 'z'); table.insert(fields, ARGV[11])
    if ARGV[10] ~= '' then
      table.insert(fields, 'b'); table.insert(fields, ARGV[10])
      table.insert(fields, 'h'); table.insert(fields, ARGV[12])
      if exists and not old[3] then redis.call('HDEL', rk, 'd') end
      redis.call('PERSIST', root .. 'c:' .. ARGV[10])
    else
      table.insert(fields, 'd'); table.insert(fields, ARGV[9])
      if old[3] then redis.call('HDEL', rk, 'b', 'h') end
    end
  elseif not exists then
    table.insert(fields, 'z'); table.insert(fields, '0')
    table.insert(fields, 'd'); table.insert(fields, '')
  end
  if mode ~= 'data' then
    table.insert(fields, 'm'); table.insert(fields, metadata)
    table.insert(fields, 'x'); table.insert(fields, ARGV[14])
    entries(ARGV[14], true)
  elseif exists then
    metadata = old[5]
  else
    metadata = '{}'
    table.insert(fields, 'm'); table.insert(fields, '{}')
    table.insert(fields, 'x'); table.insert(fields, '[]')
  end
  redis.call('HSET', rk, unpack(fields))
end
local length = tonumber(ARGV[17])
if length > 0 then
  redis.call('XADD', root .. 'X', 'MAXLEN', '~', length, '*',
    'o', ARGV[15], 'a', action, 'k', key, 'm', metadata, 'v', ARGV[7])
end
return {0, metadata}
"""
