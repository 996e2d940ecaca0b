# Stand-in for prom/prometheus:v3.5.0: Debian trixie's Prometheus (2.53) laid out as upstream:
# the binary as the entrypoint (docker-compose.yml passes only flags), /prometheus for the
# TSDB, user nobody. The scrape configuration and rules docker-compose.yml mounts read the
# same in 2.53 and 3.x.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
