-- Renews this node's liveness key; runs on the registry's slot (`{nodes}`).
-- KEYS[1]: the registry set, [2]: this node's liveness key, [3]: its `reaped` marker, [4]: the
-- epoch, [5]: the set of nodes being reaped. ARGV[1]: node, [2]: this process's session
-- token, [3]: the key's lifetime in ms, [4]: a fresh epoch token, used only if Redis has none.
-- Returns { state, epoch }: 'intact' when the key was still ours; 'foreign' when another
-- process's token was there (an earlier incarnation with this node id, or — if it keeps
-- happening — a second live process using it); 'reaping' while other nodes are still
-- releasing this node's sockets (it must not re-register them yet); 'reaped' when they have
-- declared it dead; 'expired' when the key had lapsed (or Redis lost it) and nobody reaped it.
local NODES, ALIVE, REAPED, EPOCH, REAPING = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, session = ARGV[1], ARGV[2]
redis.call('SET', EPOCH, ARGV[4], 'NX')
local epoch = redis.call('GET', EPOCH)
if redis.call('SISMEMBER', REAPING, node) == 1 then return { 'reaping', epoch } end
local registered = redis.call('SISMEMBER', NODES, node)
local previous = redis.call('SET', ALIVE, session, 'PX', ARGV[3], 'GET')
redis.call('SADD', NODES, node)
if previous == session then return { 'intact', epoch } end
if previous ~= false then return { 'foreign', epoch } end
if registered == 0 and redis.call('EXISTS', REAPED) == 1 then
  redis.call('DEL', REAPED)
  return { 'reaped', epoch }
end
return { 'expired', epoch }
