-- A `typing` frame (id 0: no counter, no log, no history). KEYS[1]: the user's typing marker
-- in the room; ARGV[1]: the partition's channel, [2]: the frame, [3]: the marker's life in ms.
-- Sent on only if the marker was not set: one per user and room per interval, however many
-- sockets and nodes the user types from. Returns 1 if sent, 0 if dropped.
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  redis.call('{{publish}}', ARGV[1], ARGV[2])
  return 1
end
return 0
