# hwnas for NVIDIA GPU targets: latency tables, search, training and TensorRT engines.
# Build:  docker build -t hwnas:latest .
# Run:    docker run --gpus all --rm hwnas:latest profile --help      (docs/docker.md has the workflow)
#
# Base image: nvidia/cuda:13.0.1-base-ubuntu24.04.
# - CUDA 13.0, because the Python stack is CUDA 13: PyPI's torch 2.14.1 wheel is the CUDA 13.0
#   build, and TensorRT comes as tensorrt-cu13 (docker/constraints.txt has the exact versions).
#   The image's NVIDIA_REQUIRE_CUDA ("cuda>=13.0") makes the NVIDIA container toolkit refuse a
#   host driver too old for CUDA 13.0 when the container starts, not in the middle of a search.
# - The "base" flavour (the CUDA runtime library only), not "runtime" or "cudnn-runtime": torch
#   loads the CUDA, cuBLAS and cuDNN libraries of its own pinned pip wheels and TensorRT comes as
#   wheels too, so the system copies in the larger flavours would be gigabytes nothing loads.
# - Ubuntu 24.04 brings Python 3.12 (hwnas needs >= 3.11); torch, TensorRT and onnxruntime have
#   wheels for it.
# - Not nvcr.io/nvidia/tensorrt: there TensorRT is whichever version that month's image bundles,
#   installed outside pip. Here the TensorRT version, the one an engine must be loaded with, is
#   one pin, and the same `pip install tensorrt-cu13==<pin>` gives a machine outside Docker the
#   runtime that loads this image's engines.
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

# python3-venv: Ubuntu's own Python refuses system-wide pip installs (PEP 668), so hwnas lives in
# a virtual environment. No compiler: every package with native code below comes as a wheel.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# PYTHONUNBUFFERED: progress reaches `docker logs` as it happens.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/venv

# The heavy, rarely changing layer first (torch and TensorRT, several GB), so that a change to
# hwnas's code rebuilds only the small layer below. Every version comes from the constraints file.
# TensorRT's -libs and -bindings wheels are published on NVIDIA's index; on PyPI they are stub
# source packages that download the wheel while being built. --only-binary rules the stubs out,
# so pip itself fetches the wheels, and nothing runs a download script.
COPY docker/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
        --extra-index-url https://pypi.nvidia.com \
        --only-binary tensorrt-cu13-libs,tensorrt-cu13-bindings \
        torch torchvision tensorrt

# hwnas itself, not editable (the source is removed after), with full TensorRT and the
# PostgreSQL driver for searches shared between containers. TensorRT is already satisfied above.
# The last commands check, without a GPU (a build has none), that the TensorRT bindings and the
# PostgreSQL driver import, that the console script starts, and that a usage error is one line
# (it once became a traceback when typer stopped bringing click).
COPY pyproject.toml README.md /tmp/hwnas/
COPY hwnas /tmp/hwnas/hwnas
RUN pip install --no-cache-dir -c /tmp/constraints.txt "/tmp/hwnas[tensorrt,postgres]" \
 && rm -rf /tmp/hwnas /tmp/constraints.txt \
 && python -c "import tensorrt, psycopg2" \
 && hwnas --help > /dev/null \
 && hwnas --version \
 && hwnas latency 2>&1 | grep -qx "error: Missing option '--arch'. (see hwnas latency --help)"

# A fixed non-root user (UID and GID 1000), owner of /work and of the mount points below.
# Ubuntu 24.04 images already have a user "ubuntu" with UID 1000: it is removed first, or
# useradd would refuse the UID.
# HOME=/tmp: `docker run --user UID:GID` may pick any UID (docs/docker.md), one without an
# account or a home here; /tmp is writable for every UID, and libraries keep caches under HOME.
RUN if id -u ubuntu > /dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 hwnas \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin hwnas \
 && install -d -o 1000 -g 1000 /work /work/latency_tables /work/data /work/runs /work/engines
ENV HOME=/tmp

# Mount points (docs/docker.md): /work/latency_tables, /work/data, /work/runs, /work/engines.
# No VOLUME instruction: a forgotten -v would only hide the results in an anonymous volume,
# which `docker run --rm` deletes with the container anyway.
WORKDIR /work
# Numeric, so that a runtime can tell it is not root without reading /etc/passwd (Kubernetes'
# runAsNonRoot refuses a user name).
USER 1000:1000

ENTRYPOINT ["hwnas"]
CMD ["--help"]
