# replay-hub container image: a release build, then a minimal non-root runtime holding only
# the binary. Build with: docker build -t replay-hub .
FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the server's build reads: its manifest and sources, the circuits and web files it
# embeds (include_str!), and the other workspace members' manifests, without which cargo cannot
# load the workspace or check Cargo.lock. Targets it does not build (benches, tests, the bench/
# tools) have explicit paths in their manifests, so their files need not be here.
# scripts/test docker-context builds this stage from exactly these files, without Docker.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY circuits circuits
COPY web/dist web/dist
COPY web/src/index.html web/src/session.html web/src/style.css web/src/favicon.svg web/src/
COPY bench/Cargo.toml bench/
COPY bench/openf1-fixture/Cargo.toml bench/openf1-fixture/
RUN cargo build --release --locked -p replay-hub --bin replay-hub \
 && strip target/release/replay-hub

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/replay-hub /usr/local/bin/replay-hub
# 65532 is distroless' "nonroot" user. Race files and the directory cache live in /data: mount
# a volume there (the root filesystem can stay read-only).
USER 65532:65532
ENV REPLAY_HUB_BIND=0.0.0.0:8080 \
    REPLAY_HUB_DATA_DIR=/data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/replay-hub"]
CMD ["serve"]
