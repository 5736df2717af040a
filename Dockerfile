# tokend in a container: a slim non-root image, the data dir a volume.
#
#   docker build -t tokend .                 # compiles inside (rust base image)
#   docker run -p 50051:50051 -v tokend-data:/var/lib/tokend \
#     -v /etc/tokend:/etc/tokend:ro tokend
#
# From a binary built outside (what CI does, with podman, rootless and
# offline; see scripts/container-smoke.sh):
#   cargo build --release --locked --bin tokend
#   podman build --target prebuilt -t tokend -f Dockerfile target/release
#
# Keep the key file (or TOKEND_KEYS) out of the data volume and backed up
# elsewhere. In a container, listening beyond loopback needs [[identities]]
# and [tls] (or allow_plaintext = true behind a TLS-terminating proxy).

ARG BUILD_IMAGE=docker.io/library/rust:1.88-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tokend

# What both images share: the user, the data dir, the defaults.
FROM ${RUNTIME_IMAGE} AS base
RUN useradd --system --uid 10001 --home-dir /var/lib/tokend tokend \
    && mkdir -p /var/lib/tokend /etc/tokend/keys \
    && chown tokend:tokend /var/lib/tokend /etc/tokend/keys \
    && chmod 0700 /var/lib/tokend /etc/tokend/keys
ENV TOKEND_DATA_DIR=/var/lib/tokend \
    TOKEND_CONFIG=/etc/tokend/tokend.toml \
    TOKEND_LISTEN=0.0.0.0:50051
VOLUME ["/var/lib/tokend"]
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/tokend"]
CMD ["serve"]

# The context is the directory holding a built `tokend` (target/release).
FROM base AS prebuilt
COPY --chmod=0755 tokend /usr/local/bin/tokend
USER tokend

# The default target: compiled in the build stage above.
FROM base AS runtime
COPY --from=build /src/target/release/tokend /usr/local/bin/tokend
USER tokend
