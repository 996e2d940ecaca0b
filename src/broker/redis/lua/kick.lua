-- A moderator's kick (not a partition frame script: no counter, log or history). KEYS[1]: the
-- user's ban from the room; ARGV[1]: the partition's channel, [2]: the kick notice (id 0, type
-- `kick`, which nodes act on and never pass to a socket), [3]: the ban in ms (0: none). Bans
-- first, so a socket opening meanwhile on any node is refused; then every node closes the
-- user's sockets in the room.
local ban_ms = tonumber(ARGV[3])
if ban_ms > 0 then
  redis.call('SET', KEYS[1], '1', 'PX', ban_ms)
end
redis.call('{{publish}}', ARGV[1], ARGV[2])
return 1
