# syntax=docker/dockerfile:1
#
# coexist: one binary, a subcommand per role (`coexist all|ingest|sink <name>|api|topics apply`).
# Build:  docker build -t coexist:latest .
# Run:    docker run --rm coexist:latest --help

############################
# Builder
############################
FROM rust:1-bookworm AS builder

# rdkafka builds librdkafka from its bundled C sources (./configure + make, no cmake);
# the `libz` feature links zlib and `ssl` links OpenSSL (Kafka over TLS, SASL SCRAM).
# mongodb uses rustls.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the crates registry and target/ between builds (BuildKit). The binary is
# copied out inside the same RUN, because the cached target/ is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin coexist \
 && mkdir -p /out \
 && cp target/release/coexist /out/coexist \
 && strip /out/coexist

############################
# Runtime
############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to managed Kafka / Mongo Atlas / ClickHouse Cloud etc.; libssl3:
# librdkafka's TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 coexist \
 && useradd --system --uid 10001 --gid coexist --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin coexist

COPY --from=builder /out/coexist /usr/local/bin/coexist

# In a container the HTTP roles must listen on every interface (the binary defaults to 127.0.0.1).
ENV COEXIST_INGEST_LISTEN=0.0.0.0:8080 \
    COEXIST_API_LISTEN=0.0.0.0:8081 \
    COEXIST_LOG_FORMAT=json

USER 10001:10001
EXPOSE 8080 8081

ENTRYPOINT ["coexist"]
CMD ["all"]
