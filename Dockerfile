# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p latchkey

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home latchkey
COPY --from=build /src/target/release/latchkey /usr/local/bin/latchkey
USER latchkey
# Inside a container the listener must accept connections from the host:
# set listen = "0.0.0.0:8931" and allow_non_loopback = true in the mounted config,
# and publish the port on the host's loopback only (-p 127.0.0.1:8931:8931).
ENV LATCHKEY_CONFIG=/config/config.toml
EXPOSE 8931
ENTRYPOINT ["latchkey"]
CMD ["serve"]
