# Stand-in for redis:7.4-alpine: Debian trixie's redis-server (Redis 8.0) and redis-cli, with
# the upstream image's behaviour that docker-compose.yml relies on: `redis-server ARGS` as the
# command, /data as the working directory (where the AOF goes), the server dropped to user
# redis while the container starts as root (the `secret` service runs its shell as root), and
# protected mode off (upstream patches it out of the build: other containers must connect).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown redis:redis /data
COPY redis-server.sh /usr/local/bin/redis-server
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
