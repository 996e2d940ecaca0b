-- A page of a room's retained messages (not a frame script: reads one key). KEYS[1]: the
-- room's `chats`; ARGV[1]: the page ends below this id ('' for the newest), ARGV[2]: how many
-- at most. Returns them oldest first; the node drops those past CONFAB_RETAIN_DAYS.
local CHATS = KEYS[1]
local before, count = tonumber(ARGV[1]), tonumber(ARGV[2])

local first, len = window(CHATS)
local stop = before and lower_bound(CHATS, first, len, before) or len
local start = math.max(first, stop - count)
if stop <= start then return {} end
return redis.call('LRANGE', CHATS, start, stop - 1)
