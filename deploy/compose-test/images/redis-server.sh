#!/bin/sh
# Protected mode off, as the upstream image builds it (a later --protected-mode still wins).
exec /usr/bin/redis-server "$@" --protected-mode no
