-- One more socket of a user in a room, on this node. First announces the room's due
-- departures (so a room in a partition no node was sweeping shows no ghost), then counts the socket,
-- announces `join` if the user was not online, and returns the joining socket's snapshot,
-- taken at the same instant: { newest id of the partition, the room's history, the users
-- online }.
-- ARGV[7]: node, [8]: room, [9]: user id, [10]: user JSON, [11]: the `left` frame's
-- `"user":…,"data":…` fragment, [12]: the `join` frame body, [13]: most departures to sweep.
local node, room, uid = ARGV[7], ARGV[8], ARGV[9]
-- KEYS[11]: the user's ban from the room (set by `kick`): a banned user changes nothing.
if redis.call('EXISTS', KEYS[11]) == 1 then return {'banned'} end
sweep(tonumber(ARGV[13]), room)
local field = room .. ' ' .. uid
redis.call('HINCRBY', node_sockets(node), field, 1)
redis.call('HINCRBY', room_key(room, 'sockets'), uid, 1)
redis.call('ZREM', LEAVING, field)
if redis.call('SADD', room_key(room, 'online'), uid) == 1 then
  redis.call('HSET', room_key(room, 'users'), uid, ARGV[10])
  redis.call('HSET', room_key(room, 'farewell'), uid, ARGV[11])
  emit(room_key(room, 'history'), ARGV[12])
end
local count = redis.call('GET', SEQ)
return {
  count and fmt(tonumber(count) * PARTITIONS + partition) or '0',
  HISTORY_LEN > 0 and redis.call('LRANGE', room_key(room, 'history'), -HISTORY_LEN, -1) or {},
  redis.call('HVALS', room_key(room, 'users')),
}
