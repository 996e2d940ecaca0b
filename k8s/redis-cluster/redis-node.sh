#!/bin/sh
# Runs one Redis Cluster pod: redis-server with the arguments given (redis.conf), announcing
# the pod's stable name, redis-N.redis, which clients are sent to.
#
# The cluster bus finds peers by the IPs in nodes.conf, and a pod gets a new IP when it is
# recreated. One pod coming back is found by itself (it still knows its peers' IPs, and they
# learn its new one when it pings them); when several come back with new IPs at once, none
# may know where the others are. So, every 15 s, this node looks up each peer it knows by its
# name and, if the name resolves to another IP than it has on file and the node there has the
# peer's id, meets it there (CLUSTER MEET to a known node only updates its address). It never
# meets other nodes: the cluster is created by the redis-cluster-create Job, and a new pod in
# an old one's place (a lost volume) is added by hand (docs/deploy.md, "Redis Cluster").
set -eu

remeet() {
    set +e
    while sleep 15; do
        redis-cli cluster nodes 2>/dev/null | while read -r id address flags _; do
            case $flags in *myself*) continue ;; esac
            # ip:port@cport,hostname (ip empty once the node lost it)
            name=${address#*,}
            [ "$name" != "$address" ] && [ -n "$name" ] || continue
            known=${address%%:*}
            port=${address#*:}
            port=${port%%@*}
            [ "${port:-0}" != 0 ] || port=6379
            ip=$(getent hosts "$name" | awk '{ print $1; exit }')
            [ -n "$ip" ] && [ "$ip" != "$known" ] || continue
            theirs=$(redis-cli -h "$ip" -p "$port" cluster myid 2>/dev/null | tr -d '\r')
            if [ "$theirs" = "$id" ]; then
                echo "redis-node.sh: $name is at $ip (on file: ${known:-none}): CLUSTER MEET"
                redis-cli cluster meet "$ip" "$port" >/dev/null || true
            fi
        done
    done
}

remeet &
exec redis-server "$@" --cluster-announce-hostname "$(hostname).redis"
