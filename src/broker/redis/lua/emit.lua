-- The first part of every script that makes frames (docs/redis.md describes the keys).
--
-- A script runs on the slot of one partition of rooms: every key it touches carries that
-- partition's hash tag. Redis runs a script atomically, so a frame gets its id, enters the
-- partition's log and its room's history, and is published, with nothing in between: that
-- is why each partition's channel carries its frames in id order.
--
-- KEYS[1..3] and ARGV[1..11] are the same for every such script; the script's own follow.
local SEQ, SEQ_START, LOG = KEYS[1], KEYS[2], KEYS[3]

local floor = tonumber(ARGV[1])        -- the highest counter value the calling node has seen
local now_us = tonumber(ARGV[2])       -- the caller's clock, microseconds since the epoch
local now_ms = tonumber(ARGV[3])       -- the same, in milliseconds (the frames' ts)
local partition = tonumber(ARGV[4])    -- this partition's number, folded into every id
local CHANNEL = ARGV[5]                -- the partition's channel
local PUBLISH = ARGV[6]                -- PUBLISH on one Redis, SPUBLISH on a Redis Cluster
local history_len = tonumber(ARGV[7])  -- CONFAB_HISTORY
local log_len = tonumber(ARGV[8])      -- frames kept in the partition's log for gap repair
local retention_ms = tonumber(ARGV[9]) -- how long an idle room keeps its history
local PARTITIONS = 128                 -- keys::PARTITIONS

-- Ids stay below 2^53, so Lua's doubles hold them exactly; '%d' prints them without exponent.
local function fmt(n) return string.format('%d', n) end

-- The next id: counter × PARTITIONS + partition, so ids are unique across partitions and
-- grow within one. A new sequence (first use, or Redis restarted empty) begins at the
-- caller's time in microseconds, above anything still in the log; and no counter value is
-- given out at or below one some node has already seen.
local function next_id()
  local count = redis.call('INCR', SEQ)
  if count == 1 or count <= floor then
    local fresh = count == 1
    local base = floor
    if fresh then
      base = math.max(base, math.floor(now_us / PARTITIONS))
      local newest = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)[1]
      if newest then
        base = math.max(base, math.floor(tonumber(string.match(newest[1], '^%d+')) / PARTITIONS))
      end
    end
    count = base + 1
    redis.call('SET', SEQ, fmt(count))
    -- A new sequence: nodes that find ids missing below its start know those were never
    -- given out by this Redis (whereas values skipped to pass `floor` were, elsewhere).
    if fresh then redis.call('SET', SEQ_START, fmt(count)) end
  end
  return count * PARTITIONS + partition
end

-- Gives `body` (a frame without its id: `"type":…}`) the next id, keeps it in the log and in
-- the room's history (the list at key `history`), and publishes it. Returns the id.
local function emit(history, body)
  local id = next_id()
  local frame = '{"id":' .. fmt(id) .. ',' .. body
  redis.call('XADD', LOG, 'MAXLEN', '~', log_len, fmt(id) .. '-0', 'f', frame)
  if history_len > 0 then
    redis.call('RPUSH', history, frame)
    redis.call('LTRIM', history, -history_len, -1)
    redis.call('PEXPIRE', history, retention_ms)
  end
  redis.call(PUBLISH, CHANNEL, frame)
  return id
end
