# segensemble serving image: the runtime only (no torch), serving a build directory mounted at /build.
#   GPU (default): docker build -t segensemble .            docker run --gpus all -v $PWD/build:/build:ro -p 8000:8000 segensemble
#   CPU:           docker build --build-arg VARIANT=cpu -t segensemble:cpu .
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: the base image's majors must match.
ARG VARIANT=gpu
ARG GPU_BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
ARG CPU_BASE=ubuntu:24.04

FROM ${GPU_BASE} AS base-gpu
FROM ${CPU_BASE} AS base-cpu

# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT
ARG ORT_GPU_VERSION=1.31.1
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY segensemble ./segensemble
# the same steps as the README's "Install" section: serve extra; on GPU, onnxruntime-gpu replaces onnxruntime
# (the package itself comes from this context, so DL3013's version pin does not apply)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve]" \
 && if [ "$VARIANT" = "gpu" ]; then \
      pip uninstall -y onnxruntime \
      && pip install --no-cache-dir --force-reinstall --no-deps "onnxruntime-gpu==${ORT_GPU_VERSION}"; \
    fi \
 && useradd --create-home --uid 10001 segensemble
USER 10001
ENV SEGENSEMBLE_BUILD=/build
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthz"]
# 0.0.0.0 inside the container only; publish the port deliberately (-p 127.0.0.1:8000:8000 to keep it local)
CMD ["ensemble", "serve", "--build", "/build", "--host", "0.0.0.0", "--port", "8000"]
