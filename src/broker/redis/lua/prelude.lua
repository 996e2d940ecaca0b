-- The prelude of every confab script (docs/redis.md describes the keys).
--
-- Redis runs a script atomically, so everything a script does happens at one instant for
-- every node: a frame gets its id, enters the log and its room's history, and is published,
-- with nothing in between. That is why PUBLISH order is id order on every node.
--
-- ARGV[1..7] are the same for every script, ARGV[8..] are the script's own.

local PREFIX = 'confab:'
local SEQ = PREFIX .. 'seq'
local SEQ_START = PREFIX .. 'seq_start'
local LOG = PREFIX .. 'log'
local EVENTS = PREFIX .. 'events'
local LEAVING = PREFIX .. 'leaving'
local NODES = PREFIX .. 'nodes'
local EPOCH = PREFIX .. 'epoch'

local floor = tonumber(ARGV[1])        -- the highest id the calling node has seen
local now_us = tonumber(ARGV[2])       -- the caller's clock, microseconds since the epoch
local now_ms = tonumber(ARGV[3])       -- the same, in milliseconds (the frames' ts)
local history_len = tonumber(ARGV[4])  -- CONFAB_HISTORY
local log_len = tonumber(ARGV[5])      -- frames kept in the log for gap repair
local retention_ms = tonumber(ARGV[6]) -- how long an idle room keeps its history
local grace_ms = tonumber(ARGV[7])     -- CONFAB_LEAVE_GRACE_MS

local function room_key(room, part) return PREFIX .. 'room:' .. room .. ':' .. part end
local function node_key(node, part) return PREFIX .. 'node:' .. node .. ':' .. part end
-- Ids stay below 2^53, so Lua's doubles hold them exactly; '%d' prints them without exponent.
local function fmt(n) return string.format('%d', n) end

-- The next id. A new sequence (first start, or Redis restarted empty) begins at the caller's
-- time in microseconds, above anything still in the log; and no id is ever given out at or
-- below an id some node has already seen.
local function next_id()
  local id = redis.call('INCR', SEQ)
  if id == 1 or id <= floor then
    local fresh = id == 1
    local base = floor
    if fresh then
      base = math.max(base, now_us)
      local newest = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)[1]
      if newest then base = math.max(base, tonumber(string.match(newest[1], '^%d+'))) end
    end
    id = base + 1
    redis.call('SET', SEQ, fmt(id))
    -- A new sequence: nodes that find ids missing below its start know those were never
    -- given out by this Redis (whereas ids skipped to pass `floor` were, elsewhere).
    if fresh then redis.call('SET', SEQ_START, fmt(id)) end
  end
  return id
end

-- Gives `body` (a frame without its id: `"type":…}`) the next id, keeps it in the log and in
-- its room's history, and publishes it to every node. Returns the id.
local function emit(room, body)
  local id = next_id()
  local frame = '{"id":' .. fmt(id) .. ',' .. body
  redis.call('XADD', LOG, 'MAXLEN', '~', log_len, fmt(id) .. '-0', 'f', frame)
  if history_len > 0 then
    local history = room_key(room, 'history')
    redis.call('RPUSH', history, frame)
    redis.call('LTRIM', history, -history_len, -1)
    redis.call('PEXPIRE', history, retention_ms)
  end
  redis.call('PUBLISH', EVENTS, frame)
  return id
end

-- Takes `uid` out of the room's online set and announces `left`, once: SREM succeeds for
-- exactly one caller.
local function announce_left(room, uid)
  if redis.call('SREM', room_key(room, 'online'), uid) == 0 then return 0 end
  local farewell = redis.call('HGET', room_key(room, 'farewell'), uid)
  redis.call('HDEL', room_key(room, 'users'), uid)
  redis.call('HDEL', room_key(room, 'farewell'), uid)
  if farewell then
    emit(room, '"type":"left","room":"' .. room .. '",' .. farewell .. ',"ts":' .. fmt(now_ms) .. '}')
  end
  return 1
end

-- Removes `count` of the user's sockets from the room's total. When none is left anywhere,
-- the user leaves: at once without a grace, else when the sweep finds the deadline passed.
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

-- Forgets every socket `node` had, as if each had closed, with `grace` before `left`.
local function release_node(node, grace)
  local mine = node_key(node, 'sockets')
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
