# Stand-in for busybox:1.37-musl: the shipped Dockerfile copies its one static binary,
# /bin/busybox. Debian's busybox-static is the same BusyBox 1.37, static (glibc).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static \
    && rm -rf /var/lib/apt/lists/* \
    && /bin/busybox wget --help >/dev/null 2>&1
CMD ["sh"]
