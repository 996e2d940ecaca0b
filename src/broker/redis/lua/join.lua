-- One more socket of a user in a room, on this node. First announces the room's due
-- departures (so a room in a partition no node was sweeping shows no ghost), then counts the socket,
-- announces `join` if the user was not online, and returns the joining socket's snapshot,
-- taken at the same instant: { newest id of the partition, the room's history, the users
-- online }.
-- ARGV[5]: node, [6]: room, [7]: user id, [8]: user JSON, [9]: the `left` frame's
-- `"user":…,"data":…` fragment, [10]: the `join` frame body, [11]: most departures to sweep.
local node, room, uid = ARGV[5], ARGV[6], ARGV[7]

-- The room's history: its newest HISTORY_LEN frames of any kind, oldest first. Chats and the
-- other frames are kept in two lists (a chat is written once, to `chats`), both in id order,
-- so the newest HISTORY_LEN of their merge are among the newest HISTORY_LEN of each. Chats
-- past CONFAB_RETAIN_DAYS are left out, as scrollback leaves them out.
local function history()
  if HISTORY_LEN == 0 then return {} end
  local chats = redis.call('LRANGE', room_key(room, 'chats'), -HISTORY_LEN, -1)
  local events = redis.call('LRANGE', room_key(room, 'events'), -HISTORY_LEN, -1)
  local oldest_kept = tonumber(now_ms) - RETAIN_MS
  local newest_first = {}
  local c, e = #chats, #events
  while #newest_first < HISTORY_LEN and (c > 0 or e > 0) do
    if e == 0 or (c > 0 and id_of(chats[c]) > id_of(events[e])) then
      if (ts_of(chats[c]) or 0) >= oldest_kept then newest_first[#newest_first + 1] = chats[c] end
      c = c - 1
    else
      newest_first[#newest_first + 1] = events[e]
      e = e - 1
    end
  end
  local frames = {}
  for i = #newest_first, 1, -1 do frames[#frames + 1] = newest_first[i] end
  return frames
end

-- KEYS[12]: the user's ban from the room (set by `kick`): a banned user changes nothing.
if redis.call('EXISTS', KEYS[12]) == 1 then return {'banned'} end
sweep(tonumber(ARGV[11]), room)
local field = room .. ' ' .. uid
redis.call('HINCRBY', node_sockets(node), field, 1)
redis.call('HINCRBY', room_key(room, 'sockets'), uid, 1)
redis.call('ZREM', LEAVING, field)
if redis.call('SADD', room_key(room, 'online'), uid) == 1 then
  redis.call('HSET', room_key(room, 'users'), uid, ARGV[8])
  redis.call('HSET', room_key(room, 'farewell'), uid, ARGV[9])
  emit(room_key(room, 'events'), HISTORY_LEN, ARGV[10])
end
local count = redis.call('GET', SEQ)
return {
  count and fmt(tonumber(count) * PARTITIONS + partition) or '0',
  history(),
  redis.call('HVALS', room_key(room, 'users')),
}
