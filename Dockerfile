# prism-serve image, Hugging Face Inference Endpoints style: the entrypoint is `text-generation-launcher`, so
# `docker run IMAGE --model-id /repository` passes flags through; PORT=80 and HF_HOME=/data as in TGI's image.
#   docker build -t prism-serve .                                   # CPU torch
#   docker build -t prism-serve:cuda --build-arg TORCH_VARIANT=cu128 .
#   docker run -p 8080:80 -v $PWD/data:/data prism-serve            # serves the demo model
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA wheel index of download.pytorch.org such as cu126 / cu128
ARG TORCH_VARIANT=cpu
# optional extras, e.g. "[gpu]" on a CUDA build host (flash-attn builds from source)
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /usr/src/prism-serve

# torch first, from the index of the requested variant, so the package install below never pulls another build
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

COPY pyproject.toml README.md ./
COPY proto ./proto
COPY router_py ./router_py
COPY shard ./shard
COPY prism_cache ./prism_cache
COPY flash_kernels ./flash_kernels
COPY bench ./bench

# The package's own dependencies are pinned by ranges in pyproject.toml; the gRPC stubs are then generated once
# into the installed package (`-P`: not from the source tree in the working directory).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".${EXTRAS}" \
    && python -P -m proto.build

ENV HF_HOME=/data \
    PRISM_CACHE_DIR=/data/prism-serve \
    HUGGINGFACE_HUB_CACHE=/data/hub \
    PORT=80

VOLUME /data
EXPOSE 80

ENTRYPOINT ["text-generation-launcher"]
CMD []
