-- One more socket of a user in a room, on this node. First announces the partition's due
-- departures (so a partition no node was sweeping shows no ghost), then counts the socket,
-- announces `join` if the user was not online, and returns the joining socket's snapshot,
-- taken at the same instant: { newest id of the partition, the room's history, the users
-- online }.
-- ARGV[12]: node, [13]: room, [14]: user id, [15]: user JSON, [16]: the `left` frame's
-- `"user":…,"data":…` fragment, [17]: the `join` frame body, [18]: most departures to sweep.
local node, room, uid = ARGV[12], ARGV[13], ARGV[14]
sweep(tonumber(ARGV[18]))
local field = room .. ' ' .. uid
redis.call('HINCRBY', node_sockets(node), field, 1)
redis.call('HINCRBY', room_key(room, 'sockets'), uid, 1)
redis.call('ZREM', LEAVING, field)
if redis.call('SADD', room_key(room, 'online'), uid) == 1 then
  redis.call('HSET', room_key(room, 'users'), uid, ARGV[15])
  redis.call('HSET', room_key(room, 'farewell'), uid, ARGV[16])
  emit(room_key(room, 'history'), ARGV[17])
end
local count = redis.call('GET', SEQ)
return {
  count and fmt(tonumber(count) * PARTITIONS + partition) or '0',
  redis.call('LRANGE', room_key(room, 'history'), 0, -1),
  redis.call('HVALS', room_key(room, 'users')),
}
