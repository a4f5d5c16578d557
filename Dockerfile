# objmeta's container image: built in a Rust image, run in a small Debian one as a non-root user.
#
#   docker build -t objmeta .
#   docker run --rm objmeta --help
#
# The build stage installs the same build packages as scripts/test (BUILD_PACKAGES there:
# librdkafka is compiled from source with the ssl and zstd features) and builds with
# `cargo build --release --locked`; scripts/check-compose checks that both stay in step, and
# scripts/check-images that every FROM is in deploy/images.yml.

FROM docker.io/library/rust:1.95.0-bookworm AS build
# cmake is not among them: rdkafka builds librdkafka with its own configure script (the
# cmake-build feature is off), and no crate in Cargo.lock needs it.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer of their own: with only the manifests and empty crate roots,
# this layer (librdkafka and every crate, most of the build time) is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/objmeta-* target/release/deps/objmeta-* \
        target/release/deps/libobjmeta-*
# Then objmeta itself. sql/ is compiled in (the migrations).
COPY src src
COPY sql sql
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked \
    && install -D -m 0755 target/release/objmeta /out/objmeta

FROM docker.io/library/debian:bookworm-slim AS runtime
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
# SIGTERM (docker stop) makes objmeta write what it has, commit and close its consumer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/objmeta"]
CMD ["run"]
