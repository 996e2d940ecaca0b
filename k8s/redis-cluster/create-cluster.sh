#!/bin/sh
# The redis-cluster-create Job: creates the Redis Cluster from the pods in REDIS_NODES
# (host:port, space-separated; the first half become primaries, the rest their replicas)
# when every one of them is new, and leaves an existing cluster alone, so running it again is
# harmless. It succeeds once every node reports cluster_state:ok, and fails after TIMEOUT
# seconds (default 600) if that never comes: a pod that is not up, or a new pod among the
# nodes of an existing cluster (a lost volume: docs/deploy.md, "Redis Cluster").
set -eu
: "${REDIS_NODES:?REDIS_NODES lists the cluster's nodes}"
deadline=$(($(date +%s) + ${TIMEOUT:-600}))
count=0
for node in $REDIS_NODES; do count=$((count + 1)); done

# field NODE NAME: NAME's value in NODE's CLUSTER INFO, empty when NODE does not answer.
field() {
    redis-cli -h "${1%:*}" -p "${1##*:}" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}
# until_all TEXT CHECK: waits until CHECK holds for every node.
until_all() {
    while :; do
        pending=
        for node in $REDIS_NODES; do
            "$2" "$node" || pending="$pending $node"
        done
        [ -n "$pending" ] || return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "create-cluster.sh: gave up waiting until $1:$pending" >&2
            exit 1
        fi
        sleep 2
    done
}
answers() { [ -n "$(field "$1" cluster_state)" ]; }
is_new() { [ "$(field "$1" cluster_known_nodes)" = 1 ] && [ "$(field "$1" cluster_slots_assigned)" = 0 ]; }
is_ok() { [ "$(field "$1" cluster_state)" = ok ] && [ "$(field "$1" cluster_known_nodes)" = "$count" ]; }

until_all "every node answers" answers
new=yes
for node in $REDIS_NODES; do
    is_new "$node" || new=no
done
if [ "$new" = yes ]; then
    echo "create-cluster.sh: creating the cluster of$(printf ' %s' $REDIS_NODES)"
    # shellcheck disable=SC2086 # one argument per node
    redis-cli --cluster create $REDIS_NODES --cluster-replicas 1 --cluster-yes
else
    echo "create-cluster.sh: the cluster exists; not creating it"
fi
until_all "every node reports cluster_state:ok and knows the others" is_ok
echo "create-cluster.sh: cluster_state:ok on every node"
