-- Makes Redis hold exactly what this node really has in this partition, after a failure left
-- it unsure (a command that failed half-way, Redis restarted empty, the node declared dead).
-- ARGV[5]: node, [6]: '1' to announce `join` for users Redis had lost (they were told
-- `left`), then six values per entry from ARGV[7]: room, user id, sockets open here (0:
-- closed while Redis was unreachable), user JSON, `left` fragment, `join` body.
local node, announce = ARGV[5], ARGV[6] == '1'
local mine = node_sockets(node)
local old = redis.call('HGETALL', mine)
redis.call('DEL', mine)
-- The new counts go in before the old ones come out, so a user present in both never
-- reaches zero in between.
for i = 7, #ARGV, 6 do
  local room, uid, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local field = room .. ' ' .. uid
  if count > 0 then
    redis.call('HSET', mine, field, count)
    redis.call('HINCRBY', room_key(room, 'sockets'), uid, count)
    redis.call('ZREM', LEAVING, field)
  end
  if redis.call('SADD', room_key(room, 'online'), uid) == 1 then
    redis.call('HSET', room_key(room, 'users'), uid, ARGV[i + 3])
    redis.call('HSET', room_key(room, 'farewell'), uid, ARGV[i + 4])
    if count > 0 and announce then emit(room_key(room, 'events'), HISTORY_LEN, ARGV[i + 5]) end
    if count == 0 then
      -- Gone while Redis could not hear it: listed again only so that `left` is announced.
      redis.call('ZADD', LEAVING, now_ms + grace_ms, field)
    end
  end
end
for i = 1, #old, 2 do
  local room, uid = string.match(old[i], '^(%S+) (%S+)$')
  if room then release(room, uid, tonumber(old[i + 1]), grace_ms) end
end
return 1
