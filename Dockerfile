# syntax=docker/dockerfile:1
# latchkey in a container: docker build -t latchkey . ; see README.md "In a container".
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p latchkey

FROM debian:bookworm-slim
# ca-certificates: the upstreams are HTTPS. No keyring runs in a container, so the
# credentials go to files in the volume below (store = "file", state_dir = "/state").
# ca-certificates is not pinned: a pinned version leaves the archive with the next
# security update and the build breaks; the base image's tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /state latchkey \
    && mkdir -p /state /config \
    && chown latchkey:latchkey /state \
    && chmod 0700 /state
COPY --from=build /src/target/release/latchkey /usr/local/bin/latchkey
COPY --chmod=0644 config/container.toml /config/config.toml
# Tokens and client registrations (0600 files) and the lock files: keep them across
# container restarts and share them with `docker run ... latchkey login`.
VOLUME ["/state"]
USER 10001:10001
ENV LATCHKEY_CONFIG=/config/config.toml
EXPOSE 8931
ENTRYPOINT ["latchkey"]
CMD ["serve"]
