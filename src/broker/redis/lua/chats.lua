-- The part of every script that reads or changes a room's retained chat messages: its
-- `chats` list (docs/redis.md), each chat frame in its latest state, in id order, newest at
-- the right. Appends keep about CONFAB_RETAIN_MESSAGES of them and trim an eighth at a time
-- (`emit.lua`); readers see exactly the newest RETAIN_LEN, the window below.
local RETAIN_LEN = {{retain_len}}   -- CONFAB_RETAIN_MESSAGES
local RETAIN_MS = {{retain_ms}}     -- CONFAB_RETAIN_DAYS

-- A frame's id and its `ts`. A frame starts with its id and ends with its `ts` and at most
-- the `edited`/`deleted` marks: a plain search of its last 64 bytes finds the `ts` (an
-- unescaped `,"ts":` cannot be inside a JSON string), where a pattern would try every byte.
local function id_of(frame) return tonumber(string.match(frame, '^{"id":(%d+)')) end
local function ts_of(frame)
  local at = string.find(frame, ',"ts":', -64, true)
  return at and tonumber(string.match(frame, '^%d+', at + 6))
end

-- The visible window of the list at `key`: the index of its first retained frame and the
-- list's length (the window is `first .. len - 1`).
local function window(key)
  local len = redis.call('LLEN', key)
  return math.max(0, len - RETAIN_LEN), len
end

-- The index of the first frame in `first .. len - 1` whose id is at least `id` (`len` when
-- none is): a binary search, each probe one LINDEX.
local function lower_bound(key, first, len, id)
  local low, high = first, len
  while low < high do
    local middle = math.floor((low + high) / 2)
    if id_of(redis.call('LINDEX', key, middle)) < id then low = middle + 1 else high = middle end
  end
  return low
end

-- Where retained message `id` is in the list at `key`: its index and frame, or nil.
local function locate(key, id)
  local first, len = window(key)
  local index = lower_bound(key, first, len, id)
  if index == len then return nil end
  local frame = redis.call('LINDEX', key, index)
  if id_of(frame) ~= id then return nil end
  return index, frame
end
