# Prometheus from Debian's package, on the same Debian base as the specgrove image (no image
# from a container registry). deploy/build-images.sh builds it as debian-prometheus:bookworm.
#   docker build -f deploy/docker/prometheus.Dockerfile -t debian-prometheus:bookworm deploy/docker
ARG BASE_IMAGE=specgrove-base:bookworm
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# The package's maintainer scripts create the prometheus user; it does not start a daemon in
# a container (no init system).
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown prometheus:prometheus /prometheus

USER prometheus
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
