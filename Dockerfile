# syntax=docker/dockerfile:1
# The apiproxy image: a drop-in for both images of Gardener's apiserver-proxy pod. On PATH:
#   apiproxy                  the all-in-one node proxy (`apiproxy run`)
#   envoy                     reads Gardener's envoy.yaml (`envoy --concurrency 2 --use-dynamic-base-id -c ...`)
#   apiserver-proxy-sidecar   the VIP sidecar; also what the image runs when it is given only flags
#
# It runs as root (UID 0) only because Gardener's containers do: binding VIP:443 and managing the VIP
# need capabilities, and the pod grants exactly those (NET_BIND_SERVICE to the proxy, NET_ADMIN to the
# sidecar), drops the rest and forbids privilege escalation (the chart does; its root file system is
# read-only too), so UID 0 adds little beyond owning the image's files.
#
# BASE_IMAGE is swappable so CI can build from a locally made base (deploy/build-base.sh). pip reaches
# its index through two optional build secrets, never written to a layer:
#   --secret id=pip.conf,src=<a pip.conf>   --secret id=ca.crt,src=<a CA bundle>
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# Dependencies first, exactly pinned (the runtime closure, PyYAML included), so a source change reuses
# this layer.
COPY deploy/image/constraints.txt ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    set -eu; \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    python3 -m venv /opt/apiproxy; \
    /opt/apiproxy/bin/pip install --no-cache-dir --disable-pip-version-check --requirement constraints.txt
COPY deploy/image/build-constraints.txt pyproject.toml README.md ./
COPY apiproxy ./apiproxy
# Then apiproxy itself, built with a pinned backend; pip check proves the pins cover its dependencies;
# pip and setuptools leave.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    set -eu; \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    PIP_CONSTRAINT=/src/build-constraints.txt \
      /opt/apiproxy/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps .; \
    /opt/apiproxy/bin/pip check --disable-pip-version-check; \
    /opt/apiproxy/bin/pip uninstall --yes --disable-pip-version-check pip setuptools; \
    ln -s apiproxy-envoy /opt/apiproxy/bin/envoy

FROM ${BASE_IMAGE}
# iptables only for --setup-iptables (the sidecar's historical NOTRACK rules); the VIP itself is netlink.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/apiproxy /opt/apiproxy
COPY deploy/image/entrypoint.sh /usr/local/bin/apiproxy-entrypoint
# Where Gardener's sidecar image keeps its binary, for pods that call it by path.
RUN ln -s /opt/apiproxy/bin/apiserver-proxy-sidecar /apiserver-proxy-sidecar
ENV PATH=/opt/apiproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Root on purpose, see the top of this file.
# hadolint ignore=DL3002
USER 0
WORKDIR /
EXPOSE 443 16910
ENTRYPOINT ["/usr/local/bin/apiproxy-entrypoint"]
CMD ["--help"]
# Last, so a new version or commit reuses every layer above.
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="apiproxy" \
      org.opencontainers.image.description="Gardener apiserver-proxy node proxy: VIP, HTTP CONNECT tunnels, metrics (replaces Envoy and the VIP sidecar)" \
      org.opencontainers.image.source="https://github.com/gardener/apiserver-proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
