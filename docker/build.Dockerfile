# syntax=docker/dockerfile:1
# The build stage every service image starts from: Debian 12 with the project's build packages
# (tools/bootstrap/debian-packages.txt), LibTorch from the pinned torch wheel in /opt/venv, and one
# Release build of every binary in /src/build. Build it first, then the service images:
#   docker build -f docker/build.Dockerfile -t flotilla-build:0.1.0 .
#   docker build -f docker/gateway.Dockerfile --build-arg BUILD_IMAGE=flotilla-build:0.1.0 -t flotilla-gateway:0.1.0 .
# (docker/build-images.sh does both for every service.) No CUDA toolkit is installed here, so the
# binaries run LibTorch's CUDA paths but not kernels/cuda's own kernels: to build those, add NVIDIA's
# Debian 12 repository and its cuda-toolkit package to this stage (CMake finds it by itself).
FROM debian:12.12 AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY tools/bootstrap/debian-packages.txt /tmp/debian-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && grep -v '^\s*#' /tmp/debian-packages.txt | grep -v '^\s*$' | grep -v '^prometheus$' \
    | xargs apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# LibTorch comes from the same pinned torch wheel the tests compare against (requirements.txt).
COPY tools/bootstrap/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install "$(grep '^torch==' /tmp/requirements.txt)" "$(grep '^numpy==' /tmp/requirements.txt)"
WORKDIR /src
COPY . /src
RUN cmake -S /src -B /src/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=/opt/venv/bin/python3 \
 && cmake --build /src/build --target flotilla-registry flotilla-preprocess flotilla-gateway flotilla-worker flotilla \
 && mkdir -p /opt/flotilla/bin /opt/flotilla/lib \
 && cp /src/build/bin/flotilla* /opt/flotilla/bin/ \
 && find /src/build -name 'libflotilla*.so*' -exec cp -P {} /opt/flotilla/lib/ \;
