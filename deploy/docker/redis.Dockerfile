# Redis for the gateway's embedding cache, from Debian's redis-server package on the same base
# image as unclip's, so that the Compose stack builds and runs without pulling anything. With a
# registry, any Redis image serves as well (UNCLIP_REDIS_IMAGE=redis:7 in deploy/compose).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
USER redis
EXPOSE 6379
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["redis-cli", "ping"]
# A cache: no persistence, bounded memory, least-recently-used eviction; reachable only on the
# stack's private network.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", \
     "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
