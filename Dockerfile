# inferd's server image: `docker build -t REGISTRY/inferd:TAG .` (CPU). For GPU nodes,
# `--build-arg EXTRA=gpu,cuda-libs`: CUDA 13 and cuDNN 9 come as NVIDIA's wheels, and the node's
# NVIDIA runtime adds only the driver (EXTRA=gpu alone on a BASE_IMAGE that has those libraries).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG EXTRA=cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_MODULE_LOADING=LAZY \
    XDG_CACHE_HOME=/tmp/cache

COPY . /src
# A plain (not editable) install; the sources are not kept. Models come mounted at /mnt/models
# (KServe puts storageUri there), read-only, owned by nobody in particular.
RUN pip install --no-cache-dir "/src[${EXTRA}]" \
    && rm -rf /src \
    && mkdir -p /mnt/models \
    && groupadd --gid 1000 inferd \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin inferd

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 1000:1000
WORKDIR /tmp
# Knative and KServe conventions: REST 8080, gRPC 8081, metrics 8002 (Triton's 8000/8001/8002
# stay the defaults of `inferd serve` itself).
EXPOSE 8080 8081 8002
ENTRYPOINT ["inferd"]
CMD ["serve", "--model-repository=/mnt/models", "--http-port=8080", "--grpc-port=8081", "--metrics-port=8002"]
