-- Releases the sockets of every registered node whose liveness key has expired (it died
-- without cleaning up), so its users leave the rooms. Every node runs it; SREM makes each
-- reap happen once. ARGV[8]: this node, [9]: the grace left for the reaped users (ms),
-- [10]: how long the `reaped` marker for the dead node is kept (ms).
-- Returns the number of (room, user) entries released.
local released = 0
for _, node in ipairs(redis.call('SMEMBERS', NODES)) do
  if node ~= ARGV[8] and redis.call('EXISTS', node_key(node, 'alive')) == 0 then
    redis.call('SREM', NODES, node)
    redis.call('SET', node_key(node, 'reaped'), '1', 'PX', ARGV[10])
    released = released + release_node(node, tonumber(ARGV[9]))
  end
end
return released
