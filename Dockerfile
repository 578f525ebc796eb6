# syntax=docker/dockerfile:1
#
# DiffuseTV images. One file, two targets, each installed from its own lock file (deploy/locks/, made by
# `make lock`) with `pip install --require-hashes`:
#
#   docker build --target api -t diffusetv-api .        # the HTTP API: deploy/locks/api.txt (no torch)
#   docker build --target worker -t diffusetv-worker .  # the RQ worker: deploy/locks/worker-cpu.txt (torch's CPU build)
#   docker build --target worker --build-arg TORCH_VARIANT=cuda --build-arg TORCH_INDEX_URL= \
#       --build-arg TORCH_CUDA=13.0 -t diffusetv-worker-gpu .   # deploy/locks/worker-cuda.txt (torch's CUDA 13.0 build)
#
# The CPU torch build comes from PyTorch's CPU wheel index (TORCH_INDEX_URL); the CUDA build is the main
# index's default Linux x86_64 torch, with the CUDA runtime in the nvidia-* wheels of its lock. Which one
# was installed is checked at build time: torch's version must be TORCH_VERSION and torch.version.cuda
# must be TORCH_CUDA ("none" for the CPU build). The driver comes from the host (NVIDIA Container Toolkit).
#
# The locks are resolved for Python 3.11 on Linux x86_64 (glibc 2.28 or newer), which is what the base
# image is. The base is pinned by tag and digest (the tag says what it is, the digest makes it so); a
# different base (WORKER_BASE_IMAGE, e.g. a CUDA runtime image) must have Python 3.11 too.
#
# Dependencies are installed before the source is copied, so a code change rebuilds only the last layers,
# and pip's cache is a BuildKit cache mount, so a lock change downloads only what changed.

# checkov:skip=CKV_DOCKER_7: the base images are these ARGs, pinned by tag and digest; checkov reads `FROM ${...}` as untagged
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG WORKER_BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ------------------------------------------------------------------------------------------- common

FROM ${PYTHON_IMAGE} AS api-base
RUN groupadd --system --gid 10001 diffusetv \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/diffusetv \
       --shell /usr/sbin/nologin diffusetv

# ---------------------------------------------------------------------------------------------- api

FROM api-base AS api-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY deploy/locks/api.txt /locks/api.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps --only-binary :all: -r /locks/api.txt

FROM api-deps AS api-build
COPY . /src
# The project alone, built with the locked setuptools: nothing is resolved or fetched here.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import app.main, app.core.pictures, importlib.util as u, sys; sys.exit(bool({'torch', 'diffusion', 'worker'} & set(sys.modules)) or u.find_spec('torch') is not None)"

FROM api-base AS api
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="diffusetv-api" \
      org.opencontainers.image.description="DiffuseTV HTTP API (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="python:3.11.14-slim-bookworm"
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
# The default base has Python 3.11 already. Another base's python3 is whatever its distribution ships,
# so the apt packages follow that base and are not pinned here.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 diffusetv \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/diffusetv \
       --shell /usr/sbin/nologin diffusetv \
    && install -d -o 10001 -g 10001 -m 0750 /var/cache/diffusetv

FROM worker-base AS worker-deps
# cpu: deploy/locks/worker-cpu.txt; cuda: deploy/locks/worker-cuda.txt.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=none
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY deploy/locks/worker-${TORCH_VARIANT}.txt /locks/worker.txt
# torch is the big one, and it does not change with the code: this layer stays cached across code changes.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps --only-binary :all: \
       ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /locks/worker.txt \
    && /opt/venv/bin/python -c "import sys, torch; v, c = torch.__version__.split('+')[0], str(torch.version.cuda).lower(); print('torch', torch.__version__, 'cuda', c); sys.exit(0 if (v, c) == (sys.argv[1], sys.argv[2].lower()) else 'torch ' + torch.__version__ + ' cuda ' + c + ' is not the build asked for: ' + sys.argv[1] + ' cuda ' + sys.argv[2])" "$TORCH_VERSION" "$TORCH_CUDA"

FROM worker-deps AS worker-build
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src \
    && /opt/venv/bin/pip check

FROM worker-base AS worker
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="diffusetv-worker" \
      org.opencontainers.image.description="DiffuseTV RQ worker (torch, ${TORCH_VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="python:3.11.14-slim-bookworm"
COPY --from=worker-build /opt/venv /opt/venv
# A read-only container writes only to /tmp and to this cache (compose: a volume): torch.compile's and
# Triton's caches, and whatever else follows XDG_CACHE_HOME.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache/diffusetv \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/diffusetv/torchinductor \
    TRITON_CACHE_DIR=/var/cache/diffusetv/triton
USER 10001:10001
WORKDIR /home/diffusetv
VOLUME ["/var/cache/diffusetv"]
# Healthy means the worker's main loop is making progress: it has loaded its models and is waiting for
# jobs or running a batch within its deadline (`diffusetv worker --check`, docs/OPERATIONS.md). The
# start period covers the model load and kernel probe.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["diffusetv", "worker", "--check"]
# SIGTERM is a graceful stop: the batch running finishes, then the worker exits; during the model load
# the worker exits at once (it handles SIGTERM from its first line, also as PID 1). Give the container
# the time of the longest legitimate batch (compose: stop_grace_period, docs/OPERATIONS.md).
STOPSIGNAL SIGTERM
CMD ["diffusetv", "worker"]
