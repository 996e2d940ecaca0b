-- Renews this node's liveness key. ARGV[8]: node, [9]: this process's session token, [10]:
-- the key's lifetime in ms, [11]: a fresh epoch token, used only if Redis has none.
-- Returns { state, epoch }: state 'intact' when the key was still ours; 'foreign' when another
-- process's token was there (an earlier incarnation with this node id, or — if it keeps
-- happening — a second live process using it); 'reaped' when another node declared us dead;
-- 'expired' when the key had lapsed (or Redis lost it) and nobody reaped us.
local node = ARGV[8]
local registered = redis.call('SISMEMBER', NODES, node)
local previous = redis.call('SET', node_key(node, 'alive'), ARGV[9], 'PX', ARGV[10], 'GET')
redis.call('SADD', NODES, node)
redis.call('SET', EPOCH, ARGV[11], 'NX')
local epoch = redis.call('GET', EPOCH)
if previous == ARGV[9] then return { 'intact', epoch } end
if previous ~= false then return { 'foreign', epoch } end
if registered == 0 and previous == false and redis.call('EXISTS', node_key(node, 'reaped')) == 1 then
  redis.call('DEL', node_key(node, 'reaped'))
  return { 'reaped', epoch }
end
return { 'expired', epoch }
