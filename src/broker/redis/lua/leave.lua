-- One socket of a user in a room, on this node, closed. ARGV[5]: node, [6]: room, [7]:
-- user id. Returns 0 when this node had no such socket counted (it re-synchronised since), 2
-- when that was the user's last socket anywhere and `left` is now pending, else 1.
local node, room, uid = ARGV[5], ARGV[6], ARGV[7]
local field = room .. ' ' .. uid
local mine = node_sockets(node)
local here = redis.call('HINCRBY', mine, field, -1)
if here <= 0 then redis.call('HDEL', mine, field) end
if here < 0 then return 0 end
return release(room, uid, 1, grace_ms)
