# CPU image of the dermtriage HTTP service. It runs the README's steps: create a venv, install the
# project with `pip install -e ".[dev]"`, start `dermtriage serve`. No model hub is needed at run time.
FROM python:3.11-slim

# PIP_EXTRA_INDEX_URL: CPU-only torch wheels (the default PyPI torch wheel bundles CUDA).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    HF_HUB_OFFLINE=1 \
    DERMTRIAGE_CACHE_DIR=/home/app/.cache/dermtriage

RUN useradd --create-home --uid 10001 app
USER app
WORKDIR /home/app
# COPY --chown also owns the directory it creates, so the non-root user can build the venv in it.
COPY --chown=app:app . dermtriage/
WORKDIR /home/app/dermtriage

# The README's set-up, verbatim.
RUN python3.11 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"
ENV PATH=/home/app/dermtriage/.venv/bin:$PATH

# Bake the condition text embeddings into the image so a container is ready in seconds, not minutes.
RUN python -c "from service.runtime import build_engine; from service.settings import Settings; build_engine(Settings()).warm_up()"

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)" || exit 1
CMD ["dermtriage", "serve", "--host", "0.0.0.0"]
