# syntax=docker/dockerfile:1
# The operator image: one static (musl) binary, `opengauss-operator`, on busybox. The busybox
# userland is what the database pods' init container uses to copy the binary (the instance
# manager) into the shared emptyDir next to the stock database image.
#
#   docker build -t opengauss-operator:dev .        (make image)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/opengauss-operator:TAG --push .

FROM rust:1-bookworm AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=musl-gcc
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p opengauss-operator --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/opengauss-operator" /opengauss-operator \
 && /opengauss-operator --version

FROM busybox:1.37-musl
COPY --from=build /opengauss-operator /usr/local/bin/opengauss-operator
# Runs as non-root; the Deployment and the database pods set their own users anyway.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/opengauss-operator"]
CMD ["run"]
