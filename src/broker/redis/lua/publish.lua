-- A chat message. KEYS[4]: the room's history, KEYS[5]: its retained messages; ARGV[6]: the
-- frame body. Returns the id.
local RETAINED = KEYS[5]
local RETAIN_LEN = {{retain_len}}   -- CONFAB_RETAIN_MESSAGES
local RETAIN_MS = {{retain_ms}}     -- CONFAB_RETAIN_DAYS
local AGE_CHECK_EVERY = 32          -- publishes per look for messages past their age

local id, frame = emit(KEYS[4], ARGV[6])
if RETAIN_LEN > 0 then
  redis.call('ZADD', RETAINED, id, frame)
  -- Exactly the newest RETAIN_LEN: scrollback shows what the setting says.
  redis.call('ZREMRANGEBYRANK', RETAINED, 0, -RETAIN_LEN - 1)
  -- Messages past CONFAB_RETAIN_DAYS go as newer ones come (readers skip them meanwhile),
  -- and a room nobody writes to for that long loses its key altogether. Looking costs as much
  -- as a third of the script, so one publish in AGE_CHECK_EVERY (by the partition's counter)
  -- looks: a room that keeps talking is cleaned within a few dozen of its messages.
  local oldest = math.floor(id / PARTITIONS) % AGE_CHECK_EVERY == 0
    and redis.call('ZRANGE', RETAINED, 0, 0)[1]
  local sent = oldest and tonumber(string.match(oldest, ',"ts":(%d+)'))
  if sent and sent < tonumber(now_ms) - RETAIN_MS then
    local expired = redis.call('ZRANGE', RETAINED, 0, 63)
    for i = 1, #expired do
      local ts = tonumber(string.match(expired[i], ',"ts":(%d+)'))
      if not ts or ts >= tonumber(now_ms) - RETAIN_MS then break end
      redis.call('ZREM', RETAINED, expired[i])
    end
  end
  redis.call('PEXPIRE', RETAINED, RETAIN_MS)
end
return id
