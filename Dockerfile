# syntax=docker/dockerfile:1
#
# DiffuseTV images. One file, two targets:
#
#   docker build --target api -t diffusetv-api .        # the HTTP API: base install, no torch
#   docker build --target worker -t diffusetv-worker .  # the RQ worker: torch (a CPU build by default)
#
# As with `make`, torch is installed before the project, from TORCH_SPEC and, when set, TORCH_INDEX_URL.
# The default index is PyTorch's CPU-only one, so the default worker image carries no CUDA libraries.
# A CUDA worker (the `gpu` profile of docker-compose.yml) sets TORCH_INDEX_URL to a CUDA index of
# PyTorch's, or to nothing at all: on Linux x86_64 the default torch wheel on PyPI is a CUDA build.
# Either way the CUDA runtime libraries come inside the wheels and the driver comes from the host
# (NVIDIA Container Toolkit), so the default Python base serves a GPU worker too. WORKER_BASE_IMAGE
# swaps the worker's base, for instance for a CUDA runtime image; one without python3 gets it from apt,
# and the project needs Python 3.11 or 3.12 (Ubuntu 24.04 ships 3.12).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG WORKER_BASE_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------- api

FROM ${PYTHON_IMAGE} AS api-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE} AS api
LABEL org.opencontainers.image.title="diffusetv-api" \
      org.opencontainers.image.description="DiffuseTV HTTP API (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 diffusetv \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/diffusetv \
       --shell /usr/sbin/nologin diffusetv
COPY --from=api-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIFFUSETV_HOST=0.0.0.0 \
    DIFFUSETV_PORT=8000
USER 10001:10001
WORKDIR /home/diffusetv
EXPOSE 8000
# Liveness only (the process serves HTTP). Readiness, /readyz, also needs Redis and a live worker,
# which is not a reason to restart the API. The slim image has no curl, hence urllib.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DIFFUSETV_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["diffusetv", "api"]

# ------------------------------------------------------------------------------------------- worker

FROM ${WORKER_BASE_IMAGE} AS worker-base
# The default base has Python already. Another base's python3 is whatever its distribution ships,
# so the apt packages follow that base and are not pinned here.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 diffusetv \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/diffusetv \
       --shell /usr/sbin/nologin diffusetv

FROM worker-base AS worker-build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# torch first, in its own layer: it is the big one, and it does not change with the code.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir "/src[worker]"

FROM worker-base AS worker
LABEL org.opencontainers.image.title="diffusetv-worker" \
      org.opencontainers.image.description="DiffuseTV RQ worker (torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=worker-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/diffusetv
# No Docker health check for the worker, on purpose. It serves no port, and "the process exists" is
# already what keeps the container up: when the worker exits, the container stops and the restart
# policy brings it back (Docker outside Swarm does not restart a container for being unhealthy).
# Whether a worker is live with its model loaded is its heartbeat key in Redis: the API's GET /readyz
# reports it, and the API re-queues the jobs of a worker whose heartbeat expired.
# SIGTERM is a graceful stop: give the container time to finish its batch (compose: stop_grace_period).
HEALTHCHECK NONE
STOPSIGNAL SIGTERM
CMD ["diffusetv", "worker"]
