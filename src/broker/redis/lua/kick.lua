-- A moderator's kick: a frame of the partition like any other (`emit`, keeping it in no room
-- list), so that a node whose subscription was down when it went out finds it in the log with
-- the rest. KEYS[1..3], ARGV[1..3]: as for every script that makes frames; KEYS[4]: the user's
-- ban from the room; ARGV[4]: the kick notice (`"type":"kick",…}`, which nodes act on and never
-- pass to a socket), ARGV[5]: the ban in ms (0: none). Bans first, so a socket opening
-- meanwhile on any node is refused; then every node closes the user's sockets in the room.
-- Returns the notice's id.
local ban_ms = tonumber(ARGV[5])
if ban_ms > 0 then
  redis.call('SET', KEYS[4], '1', 'PX', ban_ms)
end
return (emit(nil, 0, ARGV[4]))
