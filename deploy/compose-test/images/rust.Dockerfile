# Stand-in for rust:1.95-slim-trixie where no image registry is reachable: Debian trixie with
# what the upstream slim image adds (gcc, libc6-dev, ca-certificates), and the host's Rust
# toolchain of the same version, laid out as upstream (RUSTUP_HOME, CARGO_HOME, PATH), so the
# shipped Dockerfile's build stage runs unchanged. scripts/compose-test builds it with the
# toolchain's bin/, lib/, libexec/ and etc/ beside this file, and the host's CA bundle: the
# build fetches crates from crates.io as it does anywhere, and trusts what the host trusts
# (where a proxy re-signs TLS, its CA).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY toolchain /usr/local/rustup/toolchains/ci-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \
    && for tool in cargo rustc rustdoc; do \
        ln -s /usr/local/rustup/toolchains/ci-x86_64-unknown-linux-gnu/bin/$tool /usr/local/cargo/bin/$tool; \
    done \
    && cargo --version && rustc --version
