# Veil in a container: the one `veil` binary, built from this repository.
#   docker build -t veil .
# The same image serves every Veil role; docker-compose.yml chooses the command.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin veil

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/veil --create-home veil
COPY --from=build /src/target/release/veil /usr/local/bin/veil
USER veil
WORKDIR /var/lib/veil
# Signaling: HTTP API and WebSocket (8080), node link (7890/udp).
# SFU: metrics and health (8081), all media on one UDP port (7882).
EXPOSE 8080/tcp 7890/udp 8081/tcp 7882/udp
ENTRYPOINT ["veil"]
