-- Releases every socket a node had in this partition: the node died (reap: ARGV[6] is the
-- grace left for its users) or is stopping (deregister: the full grace). ARGV[5]: node.
-- Returns the number of (room, user) entries released.
return release_node(ARGV[5], tonumber(ARGV[6]))
