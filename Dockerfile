# syntax=docker/dockerfile:1
# objmeta's container image: built in a Rust image, run in a small Debian one as a non-root user.
#
#   docker build -t objmeta .
#   docker run --rm objmeta --help
#
# The build stage installs the same build packages as scripts/test (BUILD_PACKAGES there:
# librdkafka is compiled from source with the ssl and zstd features) and builds with
# `cargo build --release --locked`; tests/observability.rs checks that both stay in step.

FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crate downloads and the target directory between builds; the binary
# is copied out of the cached target directory, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/objmeta /out/objmeta

FROM debian:bookworm-slim AS runtime
# libssl3 for Kafka TLS (librdkafka links OpenSSL dynamically); ca-certificates to verify
# brokers and PostgreSQL servers.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 objmeta \
    && useradd --system --uid 10001 --gid objmeta --no-create-home --shell /usr/sbin/nologin objmeta
COPY --from=build /out/objmeta /usr/local/bin/objmeta
COPY deploy/docker/objmeta-probe /usr/local/bin/objmeta-probe
USER 10001:10001
ENV HTTP_ADDR=0.0.0.0:9187 \
    LOG_FORMAT=json
EXPOSE 9187
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/objmeta-probe", "/healthz"]
# SIGTERM (docker stop) makes objmeta write what it has, commit and leave the group.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/objmeta"]
CMD ["run"]
