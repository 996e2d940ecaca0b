-- A chat message. KEYS[4]: the room's `chats`; ARGV[6]: the frame body. Returns the id.
--
-- A publish is an INCR, two RPUSHes (the partition's log, the room's chats), a PEXPIRE and
-- the PUBLISH: the history is read from the room's chats and events when a socket joins rather
-- than copied on every message (BENCHMARKS.md, "What a publish costs Redis").
local CHATS = KEYS[4]
local AGE_CHECK_EVERY = 32   -- publishes per look for messages past CONFAB_RETAIN_DAYS

local id = emit(CHATS, RETAIN_LEN, ARGV[6])
if RETAIN_LEN == 0 then return id end

-- Messages past their age go as newer ones come (readers skip them meanwhile), and a room
-- nobody writes to for that long loses its key altogether. Looking costs a fifth of the
-- script, so one publish in AGE_CHECK_EVERY (by the partition's counter) looks: a room that
-- keeps talking is cleaned within a few dozen of its messages.
if math.floor(id / PARTITIONS) % AGE_CHECK_EVERY == 0 then
  local oldest_kept = tonumber(now_ms) - RETAIN_MS
  local oldest = ts_of(redis.call('LINDEX', CHATS, 0))
  if oldest and oldest < oldest_kept then
    local frames = redis.call('LRANGE', CHATS, 0, 63)
    local aged = 0
    while aged < #frames do
      local ts = ts_of(frames[aged + 1])
      if not ts or ts >= oldest_kept then break end
      aged = aged + 1
    end
    redis.call('LTRIM', CHATS, aged, -1)
  end
end
return id
