# tokend in a container. Not built in CI here (no registry for base images):
#   docker build -t tokend .
#   docker run -p 50051:50051 -v tokend-data:/var/lib/tokend \
#     -v /etc/tokend:/etc/tokend:ro tokend
# The data dir is a volume; keep the key file (or TOKEND_KEYS) out of it
# and backed up elsewhere.

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tokend

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tokend tokend \
    && mkdir -p /var/lib/tokend /etc/tokend \
    && chown tokend:tokend /var/lib/tokend && chmod 0700 /var/lib/tokend
COPY --from=build /src/target/release/tokend /usr/local/bin/tokend
USER tokend
ENV TOKEND_DATA_DIR=/var/lib/tokend \
    TOKEND_CONFIG=/etc/tokend/tokend.toml \
    TOKEND_LISTEN=0.0.0.0:50051
VOLUME ["/var/lib/tokend"]
EXPOSE 50051
# In a container, listening beyond loopback needs [[identities]] and [tls]
# (or allow_plaintext = true behind a TLS-terminating proxy).
ENTRYPOINT ["/usr/local/bin/tokend"]
CMD ["serve"]
