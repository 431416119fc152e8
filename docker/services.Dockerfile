# The infrastructure services of docker/compose.yaml, built from a plain Debian 12 base with Debian's own packages,
# for machines that cannot pull the upstream images (postgres:16, redis:7.4) and for the DVC artifact store:
#   bash scripts/images.sh services      # deepfusion/postgres, deepfusion/redis, deepfusion/artifact-store
# Each target keeps the upstream image's interface that compose.yaml uses (environment, paths, commands) and
# runs its service as an unprivileged user.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS postgres
# The official image's contract, for what compose.yaml uses: POSTGRES_USER / POSTGRES_PASSWORD make the
# superuser on an empty PGDATA, /docker-entrypoint-initdb.d/*.sh|*.sql run once, then the server listens on
# every interface of the container (compose publishes nothing for it) with scram-sha-256 passwords.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15=15.* postgresql-client-15=15.* \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
COPY docker/services/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]

FROM ${BASE_IMAGE} AS redis
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server=5:7.0.* redis-tools=5:7.0.* \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
CMD ["redis-server", "--protected-mode", "yes"]

FROM ${BASE_IMAGE} AS artifact-store
# The DVC remote `artifacts` reached over the network: nginx's WebDAV (PUT, DELETE, MKCOL) behind basic auth, for
# DVC's http remote (`method PUT`). Stage outputs travel between workers that share no disk through it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx=1.22.* openssl=3.0.* curl=7.88.* \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /srv/artifacts && chown www-data:www-data /srv/artifacts
COPY docker/services/artifact-store.conf /etc/nginx/artifact-store.conf
COPY docker/services/artifact-store-entrypoint.sh /usr/local/bin/artifact-store-entrypoint.sh
USER www-data
ENTRYPOINT ["/usr/local/bin/artifact-store-entrypoint.sh"]
