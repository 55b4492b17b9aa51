# syntax=docker/dockerfile:1
#
# atomgit-proxy container image.
#
#   docker build -t atomgit-proxy .
#   docker run --rm -p 8080:8080 -v "$PWD/deploy:/etc/atomgit-proxy:ro" atomgit-proxy
#
# The config is read from /etc/atomgit-proxy/config.yaml (ATOMGIT_PROXY_CONFIG);
# relative paths in it (key files, client keys) resolve against that folder.
# Inside a container the config must listen on 0.0.0.0:8080, which the proxy
# accepts only with `clients:` or `allow_unauthenticated: true`.

# Base images are pinned to exact versions (the toolchain the project is
# tested with, a dated Debian release), so a rebuild gets the same bases;
# pin by digest too (`FROM image:tag@sha256:...`) where your registry
# mirror records them, and bump both on purpose.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
# benches/ too: Cargo.toml declares the benchmark, and cargo refuses a
# manifest whose declared targets are missing. atomgit-fake/ likewise: it is a
# workspace member (and in Cargo.lock), although the image leaves it out.
COPY src ./src
COPY benches ./benches
COPY atomgit-fake ./atomgit-fake
# The cache mounts keep the registry and compiled dependencies between builds;
# the binary is copied out because the target folder is not part of the layer.
# --no-default-features: the production binary, without the `dev` demo and the
# fake AtomGit it embeds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --no-default-features --locked \
    && cp target/release/atomgit-proxy /usr/local/bin/atomgit-proxy

FROM debian:bookworm-20251229-slim
# The proxy trusts its built-in Mozilla roots; ca-certificates provides
# /etc/ssl/certs/ca-certificates.crt for `upstream_ca_file` when the platform
# sits behind a CA that the system store (or a derived image) knows.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 atomgit-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin atomgit-proxy \
    && mkdir -p /etc/atomgit-proxy
COPY --from=builder /usr/local/bin/atomgit-proxy /usr/local/bin/atomgit-proxy
ENV ATOMGIT_PROXY_CONFIG=/etc/atomgit-proxy/config.yaml
USER 10001:10001
EXPOSE 8080
# SIGTERM drains in-flight requests (timeouts.shutdown, default 25s) and exits 0;
# give `docker stop` at least that long: docker stop -t 35.
STOPSIGNAL SIGTERM
# No curl in the image: the binary asks its own /_proxy/healthz (the first
# listener of the config; a wildcard listener is asked on loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["atomgit-proxy", "healthcheck"]
ENTRYPOINT ["atomgit-proxy"]
CMD ["serve"]
