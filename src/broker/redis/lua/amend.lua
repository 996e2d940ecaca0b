-- An edit or delete of a retained chat message (`moderation.rs` checked who may, and wrote
-- the new state). KEYS[4]: the room's history, KEYS[5]: its retained messages; ARGV[6]: the
-- message id, [7]: its retained frame as the node read it, [8]: its new frame, [9]: the body
-- of the `edit`/`delete` frame. Applies the change only if the message is still as read, and
-- returns the new frame's id; returns 0 when it changed meanwhile (the node reads it again).
local HISTORY, RETAINED = KEYS[4], KEYS[5]
local target, expected, replacement = ARGV[6], ARGV[7], ARGV[8]

local current = redis.call('ZRANGEBYSCORE', RETAINED, target, target)[1]
if current ~= expected then return 0 end
redis.call('ZREM', RETAINED, expected)
redis.call('ZADD', RETAINED, target, replacement)
if HISTORY_LEN > 0 then
  -- The history is short (CONFAB_HISTORY), and a message is changed far less often than sent.
  local frames = redis.call('LRANGE', HISTORY, 0, -1)
  for i = #frames, 1, -1 do
    if frames[i] == expected then
      redis.call('LSET', HISTORY, i - 1, replacement)
      break
    end
  end
end
local id = emit(HISTORY, ARGV[9])
return id
