-- Declares dead every registered node whose liveness key has expired (it died without
-- cleaning up), and returns every node whose sockets are still to be released, partition by
-- partition, by the caller (a caller that fails half-way leaves the node listed for the next).
-- Runs on the registry's slot. KEYS[1]: the registry set, [2]: the set of nodes being reaped.
-- ARGV[1]: this node, [2]: the registry's key prefix (`confab:{nodes}:`), [3]: how long the
-- `reaped` marker is kept (ms).
local NODES, REAPING = KEYS[1], KEYS[2]
local me, prefix = ARGV[1], ARGV[2]
for _, node in ipairs(redis.call('SMEMBERS', NODES)) do
  if node ~= me and redis.call('EXISTS', prefix .. 'alive:' .. node) == 0 then
    redis.call('SREM', NODES, node)
    redis.call('SADD', REAPING, node)
    redis.call('SET', prefix .. 'reaped:' .. node, '1', 'PX', ARGV[3])
  end
end
return redis.call('SMEMBERS', REAPING)
