-- The second part of every presence script: room keys, departures and releases within one
-- partition. ARGV[4]: the partition's key prefix (`confab:{tag}:`). Room keys are built from
-- that prefix, so they are always in the script's slot; KEYS[4] is the partition's departures
-- (`leaving`). Own arguments of presence scripts start at ARGV[5].
--
-- `join` and `leave` also declare every key of their room and node in KEYS, after these: while
-- a Redis Cluster migrates the partition's slot, Redis then redirects or retries the call
-- before it runs (ASK, TRYAGAIN) instead of failing it half-way at a key already moved. The
-- scripts that touch rooms they cannot name in advance (sweep, release, resync) are re-run by
-- the node's re-synchronisation if one fails so.
local grace_ms = {{grace_ms}}  -- CONFAB_LEAVE_GRACE_MS
local PREFIX = ARGV[4]
local LEAVING = KEYS[4]

local function room_key(room, part) return PREFIX .. 'room:' .. room .. ':' .. part end
local function node_sockets(node) return PREFIX .. 'node:' .. node .. ':sockets' end

-- Takes `uid` out of the room's online set and announces `left`, once: SREM succeeds for
-- exactly one caller.
local function announce_left(room, uid)
  if redis.call('SREM', room_key(room, 'online'), uid) == 0 then return 0 end
  local farewell = redis.call('HGET', room_key(room, 'farewell'), uid)
  redis.call('HDEL', room_key(room, 'users'), uid)
  redis.call('HDEL', room_key(room, 'farewell'), uid)
  if farewell then
    emit(room_key(room, 'events'), HISTORY_LEN,
      '"type":"left","room":"' .. room .. '",' .. farewell .. ',"ts":' .. fmt(now_ms) .. '}')
  end
  return 1
end

-- Removes `count` of the user's sockets from the room's total. When none is left anywhere,
-- the user leaves: at once without a grace, else when a sweep finds the deadline passed.
-- Returns 2 when the user's `left` is now pending (grace), else 1.
local function release(room, uid, count, grace)
  local sockets = room_key(room, 'sockets')
  if redis.call('HINCRBY', sockets, uid, -count) > 0 then return 1 end
  redis.call('HDEL', sockets, uid)
  if grace <= 0 then
    announce_left(room, uid)
    return 1
  end
  redis.call('ZADD', LEAVING, now_ms + grace, room .. ' ' .. uid)
  return 2
end

-- Announces `left` for up to `limit` users whose leave grace has passed and who did not come
-- back (only those of room `only`, when given). Returns how many were announced.
local function sweep(limit, only)
  local due = redis.call('ZRANGEBYSCORE', LEAVING, '-inf', now_ms, 'LIMIT', 0, limit)
  local announced = 0
  for _, field in ipairs(due) do
    local room, uid = string.match(field, '^(%S+) (%S+)$')
    if room == nil or only == nil or room == only then
      redis.call('ZREM', LEAVING, field)
      if room and redis.call('HEXISTS', room_key(room, 'sockets'), uid) == 0 then
        announced = announced + announce_left(room, uid)
      end
    end
  end
  return announced
end

-- Forgets every socket `node` had in this partition, as if each had closed, with `grace`
-- before `left`. Returns how many (room, user) entries it released.
local function release_node(node, grace)
  local mine = node_sockets(node)
  local fields = redis.call('HGETALL', mine)
  local released = 0
  for i = 1, #fields, 2 do
    local room, uid = string.match(fields[i], '^(%S+) (%S+)$')
    if room then
      release(room, uid, tonumber(fields[i + 1]), grace)
      released = released + 1
    end
  end
  redis.call('DEL', mine)
  return released
end
