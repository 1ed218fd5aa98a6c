# prism-serve image, Hugging Face Inference Endpoints style: the entrypoint is `text-generation-launcher`, so
# `docker run IMAGE --model-id /repository` passes flags through; PORT=80 and HF_HOME=/data as in TGI's image.
#   docker build -t prism-serve .                                           # CPU torch
#   docker build -t prism-serve:cuda --build-arg TORCH_VARIANT=cu128 .      # CUDA torch + a C compiler for Triton
#   docker run -p 8080:80 -v $PWD/data:/data prism-serve                    # serves the demo model
# The image runs as the non-root user `prism` (uid 1000); the package is installed from a wheel into
# site-packages with its gRPC stubs generated at build time, so nothing is written outside /data at run time.
# See docs/container.md (CUDA variant, flash-attn wheels, volume permissions, ports below 1024).
ARG PYTHON_VERSION=3.11

# ---- build: a wheel of the package (the source tree never reaches the final image) ----------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ARG SETUPTOOLS_VERSION=80.9.0
ARG WHEEL_VERSION=0.45.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install --no-cache-dir "setuptools==${SETUPTOOLS_VERSION}" "wheel==${WHEEL_VERSION}"
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY router_py ./router_py
COPY shard ./shard
COPY prism_cache ./prism_cache
COPY flash_kernels ./flash_kernels
COPY bench ./bench
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA wheel index of download.pytorch.org such as cu126 / cu128 (those wheels bundle the CUDA
# runtime libraries and Triton; the host needs only the NVIDIA driver and container toolkit)
ARG TORCH_VARIANT=cpu
# optional: a prebuilt flash-attn wheel URL matching torch, CUDA and Python (flash-attn has no PyPI wheels and
# cannot be built in this slim image); without it the shard uses its Triton attention kernels on CUDA
ARG FLASH_ATTN_WHEEL=""
ARG APP_UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Triton compiles a small C launcher the first time it runs a kernel: CUDA images need gcc at run time.
# hadolint ignore=DL3008
RUN if [ "${TORCH_VARIANT}" != "cpu" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# torch first, from the index of the requested variant, so the package install below never pulls another build
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

# The package from its wheel (dependencies by the ranges in pyproject.toml), then the gRPC stubs generated
# once into the installed package (`-P`: never from a source tree in the working directory).
COPY --from=build /wheels /tmp/wheels
# hadolint ignore=DL3013
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && if [ -n "${FLASH_ATTN_WHEEL}" ]; then pip install --no-cache-dir --no-deps "${FLASH_ATTN_WHEEL}"; fi \
    && rm -rf /tmp/wheels \
    && python -P -m proto.build \
    && python -P -c "import router_py.cli, shard.cli; from proto.generate.v3 import generate_pb2_grpc"

RUN groupadd --gid "${APP_UID}" prism \
    && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --home-dir /home/prism --shell /usr/sbin/nologin prism \
    && mkdir -p /data \
    && chown prism:prism /data

ENV HF_HOME=/data \
    PRISM_CACHE_DIR=/data/prism-serve \
    HUGGINGFACE_HUB_CACHE=/data/hub \
    PORT=80

VOLUME /data
EXPOSE 80
WORKDIR /home/prism
# numeric, so that runtimes enforcing runAsNonRoot can verify it
USER ${APP_UID}:${APP_UID}

ENTRYPOINT ["text-generation-launcher"]
CMD []
