#!/bin/sh
# preStop of a Redis Cluster pod. A primary about to stop hands its slots to one of its
# replicas first (CLUSTER FAILOVER on the replica, which catches up with the primary, then
# takes over): its rooms move at once, instead of refusing sends until cluster-node-timeout
# and an election have passed. Replicas, and a primary without a connected replica, stop as
# they are. Never fails: at worst the automatic failover follows, as after a crash.
set -u
case $(redis-cli info replication | tr -d '\r') in *role:master*) ;; *) exit 0 ;; esac
me=$(redis-cli cluster myid | tr -d '\r')
# CLUSTER NODES: id ip:port@cport,hostname flags primary-id ping pong epoch link-state slots
replica=$(redis-cli cluster nodes | tr -d '\r' | awk -v me="$me" '
    $4 == me && $3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected" {
        split($2, address, "@"); print address[1]; exit
    }')
[ -n "$replica" ] || exit 0
redis-cli -h "${replica%:*}" -p "${replica##*:}" cluster failover >/dev/null 2>&1 || exit 0
for _ in $(seq 15); do
    case $(redis-cli info replication | tr -d '\r') in
        *role:slave*) echo "hand-over.sh: slots handed over to $replica"; exit 0 ;;
    esac
    sleep 1
done
echo "hand-over.sh: $replica did not take over within 15 s; stopping anyway"
