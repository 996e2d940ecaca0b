-- One retained message (not a frame script: reads one key). KEYS[1]: the room's `chats`;
-- ARGV[1]: the message id. Returns its frame in its latest state, or nil when the room no
-- longer retains it (the node checks its age).
local _, frame = locate(KEYS[1], tonumber(ARGV[1]))
return frame
