-- A node shutting down: its remaining sockets are released (with the usual grace, so users
-- who reconnect elsewhere announce nothing) and it leaves the registry. ARGV[8]: node.
local node = ARGV[8]
local released = release_node(node, grace_ms)
redis.call('DEL', node_key(node, 'alive'))
redis.call('SREM', NODES, node)
return released
