# dermtriage HTTP service image (embedded model, CPU). Two stages: `build` installs the runtime
# dependencies (no dev extras) into a venv from a local wheel folder, `runtime` gets the venv only.
#
# The build needs no package index: put the runtime wheels in ./wheels first (the README's
# "Container image" section; .ci/container.sh does it), e.g.
#   pip wheel -w wheels . && rm wheels/dermtriage-*.whl && (cd wheels && sha256sum *.whl > SHA256SUMS)
# apt still installs Debian's python3 from the base image's Debian mirror.
#
# Writable at run time, and nowhere else (code and venv are root-owned, read-only to the service):
#   /var/lib/dermtriage    data (HOME; the SQLite file once the database support lands)
#   /var/cache/dermtriage  caches: DERMTRIAGE_CACHE_DIR (text embeddings of non-shipped models),
#                          matplotlib, Hugging Face and torch hub caches
#   /tmp
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels PIP_CONFIG_FILE=/dev/null
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/dermtriage/venv
# 1. The dependencies, from the wheel folder only (cached until the wheels' checksums change; the
#    folder is bind-mounted, not copied, so its ~3 GB never land in a layer).
COPY wheels/SHA256SUMS /tmp/wheels.SHA256SUMS
RUN --mount=type=bind,source=wheels,target=/wheels \
    cd /wheels && sha256sum --quiet -c /tmp/wheels.SHA256SUMS \
 && /opt/dermtriage/venv/bin/pip install --no-deps $(awk '{print "/wheels/" $2}' /tmp/wheels.SHA256SUMS)
# triton (~0.9 GB) goes: it is only torch.compile's GPU code generator, never loaded by `import torch`
# or by CPU (or eager CUDA) inference. The nvidia-* libraries stay: libtorch links them, and
# `import torch` fails without them (measured; see the README).
RUN /opt/dermtriage/venv/bin/pip uninstall -y triton

# 2. The package itself as a wheel, non-editable, from the source (its model files are package data);
#    installed on top of the dependencies in the runtime stage, so a code change rebuilds a ~20 MB
#    layer, not the ~5.9 GB venv layer. `pip check`: every dependency is there (triton aside).
FROM build AS package
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY models /src/models
COPY explain /src/explain
RUN --mount=type=bind,source=wheels,target=/wheels \
    /opt/dermtriage/venv/bin/pip wheel --no-deps -w /dist /src \
 && /opt/dermtriage/venv/bin/pip install --no-deps /dist/dermtriage-*.whl \
 && { out=$(/opt/dermtriage/venv/bin/pip check) \
      || ! echo "$out" | grep -v '^torch [^ ]* requires triton' | grep .; }

FROM ${BASE_IMAGE} AS runtime
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10001 dermtriage \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/dermtriage --no-create-home --no-log-init \
      --shell /usr/sbin/nologin dermtriage \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/dermtriage /var/cache/dermtriage
# Root-owned and not writable by the service user (pip compiled the .pyc files at install time).
COPY --from=build /opt/dermtriage/venv /opt/dermtriage/venv
RUN --mount=type=bind,from=package,source=/dist,target=/dist \
    PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null /opt/dermtriage/venv/bin/pip install --no-deps --no-cache-dir \
      --disable-pip-version-check /dist/dermtriage-*.whl \
 && dermtriage_dir=$(/opt/dermtriage/venv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && test -f "$dermtriage_dir/models/embedded/weights/embedded-pad-lite0.safetensors" \
 && ls "$dermtriage_dir"/models/embedded/text_cache/text-*.pt >/dev/null
# Authentication stays on: configure DERMTRIAGE_API_KEYS (a server with no keys answers 401).
ENV PATH=/opt/dermtriage/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/dermtriage \
    DERMTRIAGE_HOST=0.0.0.0 \
    DERMTRIAGE_PORT=8000 \
    DERMTRIAGE_CACHE_DIR=/var/cache/dermtriage/text \
    MPLCONFIGDIR=/var/cache/dermtriage/matplotlib \
    HF_HOME=/var/cache/dermtriage/huggingface \
    HF_HUB_OFFLINE=1 \
    TORCH_HOME=/var/cache/dermtriage/torch
USER 10001:10001
WORKDIR /var/lib/dermtriage
EXPOSE 8000
# Ready in seconds: the embedded model's condition embeddings ship in the package (text_cache).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('DERMTRIAGE_PORT', '8000'), timeout=4)"]
CMD ["dermtriage", "serve"]
# Last, so that a new revision changes metadata only, not the cached layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://dermtriage.dev
LABEL org.opencontainers.image.title="dermtriage" \
      org.opencontainers.image.description="Dermatology triage microservice (embedded model, CPU). Decision support, not a diagnosis." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
