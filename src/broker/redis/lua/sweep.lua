-- Announces `left` for users whose leave grace has passed and who did not come back, on any
-- node. Every node runs it; each departure is announced once. ARGV[8]: most to handle.
local due = redis.call('ZRANGEBYSCORE', LEAVING, '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[8]))
local announced = 0
for _, field in ipairs(due) do
  redis.call('ZREM', LEAVING, field)
  local room, uid = string.match(field, '^(%S+) (%S+)$')
  if room and redis.call('HEXISTS', room_key(room, 'sockets'), uid) == 0 then
    announced = announced + announce_left(room, uid)
  end
end
return announced
