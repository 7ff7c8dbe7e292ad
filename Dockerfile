# One image for every role: `ferry scheduler`, `ferry daemon`, `ferry get`, ...
#   docker build --build-arg FERRY_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t ferry .
FROM docker.io/library/rust:1.95-slim-bookworm AS build
ARG FERRY_GIT_COMMIT=unknown
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates ./crates
RUN FERRY_GIT_COMMIT="${FERRY_GIT_COMMIT}" cargo build --release --locked -p ferry \
    && cp target/release/ferry /ferry \
    && strip /ferry

# glibc, libgcc and CA certificates, nothing else; runs as an unprivileged user unless the
# deployment says otherwise (the daemon's DaemonSet runs as root for its host paths).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ferry /usr/local/bin/ferry
USER 65532:65532
# scheduler gRPC and metrics; daemon mirror/proxy, metrics, health, pieces.
EXPOSE 8002 8000 4001 4002 4003 4005
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["--help"]
