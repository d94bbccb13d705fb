# Multi-stage build: compile with the full toolchain, run on a slim base as a non-root user.
# The model, config and secrets are mounted at run time, never baked into the image.
# Portable code only (no target-cpu=native): the kernels pick SIMD paths at run time.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY kernels ./kernels
# build.rs is left out on purpose: it only compiles the kernels as host C++ for the tests.
RUN cargo build --release --locked --bin cloister

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cloister
COPY --from=build /src/target/release/cloister /usr/local/bin/cloister
USER 10001:10001
EXPOSE 8443
# Mount /etc/cloister (config, keys, TLS) and the sealed model read-only. The weights must be
# mlocked: run with `--ulimit memlock=-1` (or --cap-add IPC_LOCK).
ENTRYPOINT ["/usr/local/bin/cloister"]
CMD ["serve", "--config", "/etc/cloister/cloister.toml"]
