# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build -t ovembed:latest .                                   # target `serve` (the last stage, the default)
#   docker build --target quantize -t ovembed-quantize:latest .        # target `quantize` (torch + nncf, ~2 GB more)
#
# Quantize once into a host folder, then serve it:
#   mkdir -p models && sudo chown 10001 models    # the images run as uid 10001, which must be able to write there
#   docker run --rm -v "$PWD/models:/models" ovembed-quantize:latest
#   docker run -d -p 8019:8019 -v "$PWD/models:/models" ovembed:latest

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed uid, so a host-mounted models/ folder can be chown'ed to it once. /models is created here, owned by that
# user, so a named volume mounted there inherits a writable owner.
RUN groupadd --system --gid 10001 ovembed \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/ovembed --shell /usr/sbin/nologin ovembed \
 && mkdir -p /models \
 && chown ovembed:ovembed /models

WORKDIR /app
# Only what `pip install .` needs: keeps the install layer cached across edits to tests, docs, scripts.
COPY pyproject.toml constraints.txt README.md ./
COPY src/ ./src/

# ---------------------------------------------------------------------------------------------------------------
# Conversion image: PyTorch, transformers and NNCF, used once to produce models/bge-m3-int8. Declared before
# `serve` so that a plain `docker build .` gives the small serving image.
FROM base AS quantize

# As the Makefile does: PyTorch first, alone, from PyTorch's CPU index (constraints.txt pins torch==2.13.0; PyPI's
# Linux wheel is the CUDA build, which drags in several GB of nvidia-* and triton), then the package, which finds it
# installed. torchvision is never wanted: if anything pulls it in, it breaks `import transformers` next to this torch
# ("operator torchvision::nms does not exist").
RUN pip install --no-cache-dir -c constraints.txt --index-url https://download.pytorch.org/whl/cpu --no-deps torch \
 && pip install --no-cache-dir -c constraints.txt '.[convert]' \
 && (pip uninstall -y torchvision || true)

# The hub download (several GB for BGE-M3) goes to the mounted volume, so a rerun does not fetch it again and the
# non-root user can write it.
ENV HF_HOME=/models/.hf-cache

USER ovembed
VOLUME /models

ENTRYPOINT ["ovembed", "quantize"]
CMD ["BAAI/bge-m3", "--output", "/models/bge-m3-int8"]

# ---------------------------------------------------------------------------------------------------------------
# Serving image: the base package (OpenVINO, tokenizers, FastAPI...) and OpenAI token ids on /v1 (bpe-openai), no
# torch. Last stage = the default target.
FROM base AS serve

RUN pip install --no-cache-dir -c constraints.txt '.[openai-ids]'

# The server binds 127.0.0.1 by default, unreachable through a published port: a container must listen on 0.0.0.0.
# Preloading makes /health report 503 until the model is loaded, so the healthcheck (and depends_on / load
# balancers) only see the container as healthy once it can answer.
ENV OVEMBED_HOST=0.0.0.0 \
    OVEMBED_PORT=8019 \
    OPENVINO_PRELOAD_MODELS=true \
    OVEMBED_MODELS=/models/bge-m3-int8

USER ovembed
EXPOSE 8019
# The models are produced outside the image (by the quantize image or `ovembed quantize`), never baked in.
VOLUME /models

# python:3.11-slim has no curl; urllib raises on 503 or a refused connection, so any non-200 exits non-zero.
# start-period: loading BGE-M3 takes tens of seconds.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OVEMBED_PORT', '8019'), timeout=5)"]

ENTRYPOINT ["ovembed"]
CMD ["serve"]
