-- Chat messages of one partition: one, or several that waited on this node while the call
-- before them was out (`publisher.rs`). Each is `emit(its room's chats, RETAIN_LEN, body)`
-- (emit.lua), written out flat because it is the hot path. KEYS[1..3], ARGV[1..3]: as for
-- every script that makes frames; then, for chat i (1 to n): KEYS[3 + i], its room's `chats`;
-- ARGV[3 + i], its frame body. ARGV[4 + n], only when the node renews a room's expiry with
-- one of them (`expiry.rs`: once an hour per room and node): n characters, the i-th '1' when
-- chat i does so. Redis builds every argument into ARGV on every call, so the common call —
-- one chat, four arguments — carries no flag and its ARGV table needs no fourth resize. The
-- chats take consecutive counter values in the order given. Returns the first chat's id;
-- chat i's is that plus (i - 1) × 128.
--
-- Redis runs a script's whole text on every EVALSHA: defining emit.lua's and chats.lua's
-- helpers — closures over the call's values, garbage once it returns — cost a quarter of a
-- publish (BENCHMARKS.md, "What a publish costs Redis"). So this script defines no function
-- on its common path; the two rare paths below bring in those parts where they need them
-- (`scripts.rs` writes their text in at the two placeholders). Numbers go to `redis.call` as
-- strings, which Redis need not format.
local SEQ, LOG = KEYS[1], KEYS[3]
local RETAIN = {{retain_len}}   -- CONFAB_RETAIN_MESSAGES
local AGE_CHECK_EVERY = 32      -- publishes per look for messages past CONFAB_RETAIN_DAYS
local n = #KEYS - 3
local seen = tonumber(ARGV[1])   -- emit.lua: counter value × 128 + partition
local renew = ARGV[4 + n]

local count = redis.call('INCR', SEQ)
if count == 1 or count * 128 <= seen then   -- at most the node's floor
  {{emit}}
  count = restart_sequence(count, n)
elseif n > 1 then
  -- The other values with a SET, in the same atomic script: the ACL documented for confab
  -- grants INCR, not INCRBY (docs/redis.md).
  redis.call('SET', SEQ, string.format('%d', count + n - 1))
end
local first = count * 128 + seen % 128   -- keys::PARTITIONS
-- The first chat's frame; `frames` holds every chat's only when there are several, so that a
-- lone chat — the common case — builds no table.
local frame = '{"id":' .. string.format('%d', first) .. ',' .. ARGV[4]
local frames, logged
if n == 1 then
  logged = redis.call('RPUSH', LOG, frame)
else
  frames = {frame}
  for i = 2, n do
    frames[i] = '{"id":' .. string.format('%d', first + (i - 1) * 128) .. ',' .. ARGV[3 + i]
  end
  logged = redis.call('RPUSH', LOG, unpack(frames))
end
-- Lists are trimmed to their newest `len` only once they hold an eighth more (emit.lua).
if logged > {{log_len}} * 9 / 8 then
  redis.call('LTRIM', LOG, '-{{log_len}}', '-1')
end
if RETAIN > 0 then
  for i = 1, n do
    local chats = KEYS[3 + i]
    local len = redis.call('RPUSH', chats, frames and frames[i] or frame)
    if len > RETAIN * 9 / 8 then
      redis.call('LTRIM', chats, '-{{retain_len}}', '-1')
    end
    -- The expiry runs an hour past the retention, so renewing it hourly keeps every message
    -- its full retention; a new list gets one at once, whoever sends to it.
    if len == 1 or (renew and string.byte(renew, i) == 49) then   -- '1'
      redis.call('PEXPIRE', chats, {{retention_ms}} + {{renew_every_ms}})
    end
  end
end
for i = 1, n do
  redis.call('{{publish}}', ARGV[3], frames and frames[i] or frame)
end
-- The chat whose counter value is a multiple of AGE_CHECK_EVERY, if one is here.
local checked = AGE_CHECK_EVERY - (count - 1) % AGE_CHECK_EVERY
if RETAIN == 0 or checked > n then return first end

-- Messages past their age go as newer ones come (readers skip them meanwhile), and a room
-- nobody writes to for that long loses its key altogether. Looking costs a fifth of the
-- script, so one publish in AGE_CHECK_EVERY (by the partition's counter) looks: a room that
-- keeps talking is cleaned within a few dozen of its messages.
{{chats}}
local CHATS = KEYS[3 + checked]
local oldest_kept = math.floor(tonumber(ARGV[2]) / 1000) - RETAIN_MS
local oldest = ts_of(redis.call('LINDEX', CHATS, 0))
if oldest and oldest < oldest_kept then
  local oldest_frames = redis.call('LRANGE', CHATS, 0, 63)
  local aged = 0
  while aged < #oldest_frames do
    local ts = ts_of(oldest_frames[aged + 1])
    if not ts or ts >= oldest_kept then break end
    aged = aged + 1
  end
  redis.call('LTRIM', CHATS, aged, -1)
end
return first
