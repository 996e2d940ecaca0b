# confab's image: a release build in the Rust image, run from Debian slim as a non-root user.
# Templates and static files are compiled into the binary, which is all the runtime stage
# holds. docs/deploy.md explains the choices.
#
#   docker build -t confab .
#   docker run --rm -p 3000:3000 confab        # one node, embedded broker
#   docker compose up                          # three nodes, Redis, nginx, Prometheus
#
# The three base images are build arguments, so that the image builds where no registry is
# reachable, from local images of the same shape (scripts/compose-test does this):
#   docker build --build-arg BUILD_IMAGE=… --build-arg RUNTIME_IMAGE=… --build-arg BUSYBOX_IMAGE=… .
# The build needs BuildKit (the cache mounts below): `docker compose build` and `docker
# buildx build` use it. No `# syntax=` line: the engine's built-in Dockerfile frontend reads
# this file, and none has to be pulled.

# Each default is pinned to a version tag; checkov cannot see through the variable:
# checkov:skip=CKV_DOCKER_7:the base images are build arguments whose defaults are pinned tags
ARG BUILD_IMAGE=rust:1.95-slim-trixie
ARG RUNTIME_IMAGE=debian:trixie-slim
ARG BUSYBOX_IMAGE=busybox:1.37-musl

# Only for its one static binary: see the HEALTHCHECK below.
FROM ${BUSYBOX_IMAGE} AS busybox

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# Only what the build reads (the Lua scripts are under src/; build.rs and rust-embed read
# static/), so that an edit to docs or tests does not rebuild; and what cargo needs to open the
# workspace, though it builds neither: the bench member and the `hot_path` bench target.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY templates ./templates
COPY static ./static
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY bench/src ./bench/src
COPY benches ./benches
# The registry and the target directory are BuildKit caches: after a source change only
# confab itself compiles again, not its dependencies. The binary leaves the cache by a copy.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin confab \
    && install -D -m 0755 target/release/confab /out/confab

FROM ${RUNTIME_IMAGE}
# The user has a fixed numeric id, so that Kubernetes can check runAsNonRoot without looking
# it up.
RUN groupadd --system --gid 10001 confab \
    && useradd --system --uid 10001 --gid confab --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin confab
# A static busybox (1 MB, no packages to install) whose wget lets HEALTHCHECK ask /healthz:
# slim has neither curl nor wget.
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
COPY --from=build /out/confab /usr/local/bin/confab
# In a container confab listens on every interface; the rest are confab's own defaults.
ENV CONFAB_BIND=0.0.0.0:3000
USER 10001:10001
EXPOSE 3000
# SIGTERM starts the drain (1012 to every socket, then exit within 20 s); give it 30 s
# (docker stop --time 30, stop_grace_period in compose, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only: /readyz is for load balancers (503 until the node first reached Redis, and while
# it drains), and restarting a node would not bring an unreachable Redis back. The port follows
# CONFAB_BIND above.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:3000/healthz"]
ENTRYPOINT ["confab"]
