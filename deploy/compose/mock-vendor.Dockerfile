# The echoing mock vendor of the compose demo (crates/testkit's mock-vendor),
# built from the repository root as context (deploy/compose.yaml does so):
#
#   docker build -f deploy/compose/mock-vendor.Dockerfile -t localhost/valet-mock-vendor:dev .
#
# It listens on 127.0.0.1 only: compose.yaml runs it in a Valet replica's
# network namespace. A test stand-in, never for production.
ARG BUILDER=docker.io/library/rust:1.95-bookworm
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER} AS builder
WORKDIR /src
COPY . .
# The builder image's toolchain builds (rust-toolchain.toml would make rustup
# fetch rustfmt and clippy).
RUN set -eu; \
    rm -f rust-toolchain.toml; \
    cargo build --release --locked -p valet-testkit --bin mock-vendor; \
    install -D -m 0755 target/release/mock-vendor /out/mock-vendor

FROM ${RUNTIME}
COPY --from=builder /out/mock-vendor /usr/local/bin/mock-vendor
USER 65532:65532
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/mock-vendor"]
CMD ["--port", "18080"]
