-- A chat message: `emit(KEYS[4], RETAIN_LEN, ARGV[6])` (emit.lua), written out flat because
-- it is the hot path. KEYS[1..3], ARGV[1..5]: as for every script that makes frames; KEYS[4]:
-- the room's `chats`; ARGV[6]: the frame body; ARGV[7]: '1' when the node renews the room's
-- expiry with this chat (`expiry.rs`: once an hour per room and node). Returns the id.
--
-- Redis runs a script's whole text on every EVALSHA: defining emit.lua's and chats.lua's
-- helpers — closures over the call's values, garbage once it returns — cost a quarter of a
-- publish (BENCHMARKS.md, "What a publish costs Redis"). So this script defines no function
-- on its common path; the two rare paths below bring in those parts where they need them
-- (`scripts.rs` writes their text in at the two placeholders). Numbers go to `redis.call` as
-- strings, which Redis need not format.
local SEQ, LOG, CHATS = KEYS[1], KEYS[3], KEYS[4]
local RETAIN = {{retain_len}}   -- CONFAB_RETAIN_MESSAGES
local AGE_CHECK_EVERY = 32      -- publishes per look for messages past CONFAB_RETAIN_DAYS

local count = redis.call('INCR', SEQ)
if count == 1 or count <= tonumber(ARGV[1]) then
  {{emit}}
  count = restart_sequence(count)
end
local id = count * 128 + tonumber(ARGV[4])   -- keys::PARTITIONS
local frame = '{"id":' .. string.format('%d', id) .. ',' .. ARGV[6]
-- Lists are trimmed to their newest `len` only once they hold an eighth more (emit.lua).
if redis.call('RPUSH', LOG, frame) > {{log_len}} * 9 / 8 then
  redis.call('LTRIM', LOG, '-{{log_len}}', '-1')
end
if RETAIN > 0 then
  local len = redis.call('RPUSH', CHATS, frame)
  if len > RETAIN * 9 / 8 then
    redis.call('LTRIM', CHATS, '-{{retain_len}}', '-1')
  end
  -- The expiry runs an hour past the retention, so renewing it hourly keeps every message
  -- its full retention; a new list gets one at once, whoever sends to it.
  if len == 1 or ARGV[7] == '1' then
    redis.call('PEXPIRE', CHATS, {{retention_ms}} + {{renew_every_ms}})
  end
end
redis.call('{{publish}}', ARGV[5], frame)
if RETAIN == 0 or count % AGE_CHECK_EVERY ~= 0 then return id end

-- Messages past their age go as newer ones come (readers skip them meanwhile), and a room
-- nobody writes to for that long loses its key altogether. Looking costs a fifth of the
-- script, so one publish in AGE_CHECK_EVERY (by the partition's counter) looks: a room that
-- keeps talking is cleaned within a few dozen of its messages.
{{chats}}
local oldest_kept = tonumber(ARGV[3]) - RETAIN_MS
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
return id
