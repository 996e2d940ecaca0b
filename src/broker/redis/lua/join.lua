-- One more socket of a user in a room, on this node; announces `join` if the user was not
-- online, and returns the joining socket's snapshot, taken at the same instant:
-- { newest id, the room's history, the users online }.
-- ARGV[8]: node, [9]: room, [10]: user id, [11]: user JSON, [12]: the `left` frame's
-- `"user":…,"data":…` fragment, [13]: the `join` frame body.
local node, room, uid = ARGV[8], ARGV[9], ARGV[10]
local field = room .. ' ' .. uid
redis.call('HINCRBY', node_key(node, 'sockets'), field, 1)
redis.call('HINCRBY', room_key(room, 'sockets'), uid, 1)
redis.call('ZREM', LEAVING, field)
if redis.call('SADD', room_key(room, 'online'), uid) == 1 then
  redis.call('HSET', room_key(room, 'users'), uid, ARGV[11])
  redis.call('HSET', room_key(room, 'farewell'), uid, ARGV[12])
  emit(room, ARGV[13])
end
return {
  redis.call('GET', SEQ) or '0',
  redis.call('LRANGE', room_key(room, 'history'), 0, -1),
  redis.call('HVALS', room_key(room, 'users')),
}
