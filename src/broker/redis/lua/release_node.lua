-- Releases every socket a node had in this partition: the node died (reap: ARGV[8] is the
-- grace left for its users) or is stopping (deregister: the full grace). ARGV[7]: node.
-- Returns the number of (room, user) entries released.
return release_node(ARGV[7], tonumber(ARGV[8]))
