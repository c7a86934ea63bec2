# barnacle's image: a static binary on Debian slim, run as a non-root user.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t barnacle .
#
# debian-slim rather than distroless because the image carries wget for container
# health checks (`wget -q -O /dev/null http://127.0.0.1:9187/healthz`); barnacle has no
# subcommand for that. deploy/deploy_test.go checks this file.

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION" \
    -o /out/barnacle ./cmd/barnacle

FROM debian:bookworm-slim
# PostgreSQL's server binaries (postgres, pg_ctl, pg_amcheck and the amcheck extension) for
# restore drills, which start a restored copy of the archive: pg-bin-dir
# /usr/lib/postgresql/15/bin. They must be of the archive's major version; bookworm ships
# 15, the version of the Stolon images beside it. For another major version, add the PGDG
# apt repository (apt.postgresql.org) and set PG_MAJOR. The package creates no cluster.
ARG PG_MAJOR=15
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/barnacle.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget postgresql-$PG_MAJOR \
    && rm -rf /var/lib/apt/lists/*
# A fixed UID/GID, so that volumes and secrets can be given to it. /archive and /restores
# are created owned by it: Docker copies that ownership into a new named volume mounted
# there, which makes a fresh shared archive volume (and a restore-root volume) writable by
# every sidecar.
RUN groupadd --system --gid 10001 barnacle \
    && useradd --system --uid 10001 --gid barnacle --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin barnacle \
    && mkdir -p /archive /restores \
    && chown barnacle:barnacle /archive /restores
COPY --from=build /out/barnacle /usr/local/bin/barnacle
USER 10001:10001
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/barnacle"]
CMD ["agent"]
