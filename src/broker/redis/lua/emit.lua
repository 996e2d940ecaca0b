-- The first part of every script that makes frames (docs/redis.md describes the keys).
--
-- A script runs on the slot of one partition of rooms: every key it touches carries that
-- partition's hash tag. Redis runs a script atomically, so a frame gets its id, enters the
-- partition's log and its room's list, and is published, with nothing in between: that
-- is why each partition's channel carries its frames in id order.
--
-- The settings are written into the script's text when the node starts (`scripts.rs`), so a
-- call passes only what changes: KEYS[1..3] and ARGV[1..3] are the same for every script that
-- makes frames; the script's own follow. Redis builds every argument into a string in the
-- script's ARGV table on every call, and a table that outgrows 4 entries costs a resize, so a
-- script is passed nothing it can work out (the partition from the id, milliseconds from
-- microseconds).
local SEQ, SEQ_START, LOG = KEYS[1], KEYS[2], KEYS[3]

local PARTITIONS = 128                  -- keys::PARTITIONS
-- ARGV[1]: the newest id of this partition the calling node has seen, or the partition's
-- number when none (an id is counter value × PARTITIONS + partition).
local seen = tonumber(ARGV[1])
local partition = seen % PARTITIONS     -- this partition's number, folded into every id
local floor = (seen - partition) / PARTITIONS  -- the highest counter value the node has seen
local now_us = ARGV[2]                  -- the caller's clock, microseconds since the epoch
local now_ms = math.floor(tonumber(now_us) / 1000)  -- the same in milliseconds (frames' ts)
local CHANNEL = ARGV[3]                 -- the partition's channel

local HISTORY_LEN = {{history_len}}     -- CONFAB_HISTORY
local LOG_LEN = {{log_len}}             -- frames kept in the partition's log for gap repair
local RETENTION_MS = {{retention_ms}}   -- how long an idle room keeps its lists
local PUBLISH = '{{publish}}'           -- PUBLISH on one Redis, SPUBLISH on a Redis Cluster

-- Ids stay below 2^53, so Lua's doubles hold them exactly; '%d' prints them without exponent.
local function fmt(n) return string.format('%d', n) end

-- Where a sequence goes on when its counter just became `count` and that is 1 (first use, or
-- Redis restarted empty) or at most `floor`: a new sequence begins at the caller's time in
-- microseconds, above anything still in the log; and no counter value is given out at or
-- below one some node has already seen. Returns the counter value to use; `taken` values
-- (1 when nil) from it on are given out.
local function restart_sequence(count, taken)
  local fresh = count == 1
  local base = floor
  if fresh then
    base = math.max(base, math.floor(tonumber(now_us) / PARTITIONS))
    local newest = redis.call('LRANGE', LOG, -1, -1)[1]
    if newest then
      base = math.max(base, math.floor(tonumber(string.match(newest, '^{"id":(%d+)')) / PARTITIONS))
    end
  end
  count = base + 1
  redis.call('SET', SEQ, fmt(base + (taken or 1)))
  -- A new sequence: nodes that find ids missing below its start know those were never
  -- given out by this Redis (whereas values skipped to pass `floor` were, elsewhere).
  if fresh then redis.call('SET', SEQ_START, fmt(count)) end
  return count
end

-- The next id: counter × PARTITIONS + partition, so ids are unique across partitions and
-- grow within one.
local function next_id()
  local count = redis.call('INCR', SEQ)
  if count == 1 or count <= floor then count = restart_sequence(count) end
  return count * PARTITIONS + partition
end

-- Appends `frame` to the list at `key`, keeping about its newest `len`: trimmed only once it
-- holds an eighth more, so most appends cost one command. Readers take the newest `len`.
local function append(key, frame, len)
  if redis.call('RPUSH', key, frame) > len + math.floor(len / 8) then
    redis.call('LTRIM', key, -len, -1)
  end
end

-- Gives `body` (a frame without its id: `"type":…}`) the next id, keeps it in the log and in
-- one list of its room, and publishes it. The list at key `list` is the room's `chats` for a
-- chat (`keep` = CONFAB_RETAIN_MESSAGES), its `events` for any other frame (`keep` =
-- CONFAB_HISTORY); the room's history is the newest of both (`join.lua`). Returns the id and
-- the frame.
local function emit(list, keep, body)
  local id = next_id()
  local frame = '{"id":' .. fmt(id) .. ',' .. body
  append(LOG, frame, LOG_LEN)
  if keep > 0 then
    append(list, frame, keep)
    redis.call('PEXPIRE', list, RETENTION_MS)
  end
  redis.call(PUBLISH, CHANNEL, frame)
  return id, frame
end
