# syntax=docker/dockerfile:1.7
# sdxl-torchserve image. GPU by default; the same file builds the CPU image that serves the tiny model:
#   docker build -t sdxl-torchserve:gpu .                                        # weights from a volume
#   docker build -t sdxl-torchserve:gpu --build-arg MODEL=baked --build-context weights=/models/sdxl-base-1.0 .
#   docker build -t sdxl-torchserve:cpu --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#       --build-arg TORCH_SPEC=torch==2.13.0 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#       --build-arg MODEL=tiny .
# No tokens or keys are build arguments or layers: TorchServe writes its keys at start, in the container.
ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# Real weights to bake in, when MODEL=baked: `--build-context weights=DIR`. Empty otherwise.
FROM scratch AS weights

FROM ${BASE_IMAGE} AS runtime
ARG TORCH_SPEC=torch==2.9.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# Add ",xformers" only with an xformers release built for TORCH_SPEC (else pip replaces torch); SDPA is the default.
ARG EXTRAS=serve,jobs
# volume: weights mounted at /models/sdxl-base-1.0 at run time; baked: copied from the weights context;
# tiny: the offline tiny model, for a CPU smoke test.
ARG MODEL=volume
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip openjdk-17-jre-headless curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 model-server

WORKDIR /opt/sdxl-torchserve
COPY pyproject.toml README.md ./
COPY handler/ handler/
COPY sdxl_client/ sdxl_client/
COPY jobs/ jobs/
COPY scripts/ scripts/
# The project's own install script: torch first and pinned, then the package (tests check the arguments);
# Prometheus is for the test suite, not the image.
RUN SKIP_PROMETHEUS=1 SKIP_REDIS=1 SKIP_BROWSER=1 EDITABLE="" TORCH_SPEC="${TORCH_SPEC}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" EXTRAS="${EXTRAS}" \
    bash scripts/install.sh

COPY config/ config/
COPY --from=weights / /models/sdxl-base-1.0/
RUN case "${MODEL}" in \
      tiny)   python scripts/build_archive.py --model tiny --export-path /opt/model-store ;; \
      baked)  python scripts/build_archive.py --model /models/sdxl-base-1.0 --export-path /opt/model-store ;; \
      volume) python scripts/build_archive.py --model /models/sdxl-base-1.0 --weights-by-path \
                --export-path /opt/model-store ;; \
      *) echo "MODEL must be volume, baked or tiny" >&2; exit 1 ;; \
    esac \
 && rm -rf build \
 && chown -R model-server /opt/model-store

USER 1000:1000
WORKDIR /home/model-server
ENV TEMP=/home/model-server/tmp
RUN mkdir -p /home/model-server/tmp
EXPOSE 8080 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
  CMD ["bash", "/opt/sdxl-torchserve/scripts/healthcheck.sh"]
CMD ["torchserve", "--start", "--foreground", "--ncs", \
     "--ts-config", "/opt/sdxl-torchserve/config/container.properties", "--model-store", "/opt/model-store"]
