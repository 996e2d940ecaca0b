-- An edit or delete of a retained chat message (`moderation.rs` checked who may, and wrote
-- the new state). KEYS[4]: the room's `chats`, KEYS[5]: its `events`; ARGV[4]: the message
-- id, [5]: its retained frame as the node read it, [6]: its new frame, [7]: the body of the
-- `edit`/`delete` frame. Applies the change only if the message is still as read, and returns
-- the new frame's id; returns 0 when it changed meanwhile (the node reads it again).
local CHATS, EVENTS = KEYS[4], KEYS[5]
local expected, replacement = ARGV[5], ARGV[6]

local index, current = locate(CHATS, tonumber(ARGV[4]))
if current ~= expected then return 0 end
-- The history is read from the chats list, so it shows the new state too.
redis.call('LSET', CHATS, index, replacement)
local id = emit(EVENTS, HISTORY_LEN, ARGV[7])
return id
