# syntax=docker/dockerfile:1
# flotilla-worker: LibTorch with its CUDA runtime. Without --rank the worker is its replica's agent:
# it starts the tensor-parallel group's ranks and restarts them together.
#
# The CUDA runtime is the one LibTorch was built against: the torch wheel's nvidia/cu13 libraries
# (cudart, cuBLAS, cuDNN, NCCL), copied beside LibTorch; the GPU driver comes from the node through
# the NVIDIA Container Toolkit (the NVIDIA_* variables below). NVIDIA's nvidia/cuda runtime images
# are Ubuntu or RHEL based, and the services link Debian 12's gRPC, Abseil and protobuf, so the base
# stays Debian rather than mixing two distributions' ABIs.
#   docker build -f docker/worker.Dockerfile --build-arg BUILD_IMAGE=flotilla-build:0.1.0 -t flotilla-worker:0.1.0 .
ARG BUILD_IMAGE=flotilla-build:latest
FROM ${BUILD_IMAGE} AS build

FROM debian:12.12-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libabsl20220623 libbrotli1 libc-ares2 libcpp-httplib0.11 libgrpc++1.51 libgrpc29 \
    libprometheus-cpp-core1.0 libprotobuf32 libre2-9 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 flotilla && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flotilla
COPY --from=build /opt/venv/lib/python3.11/site-packages/torch/lib /opt/torch/lib
COPY --from=build /opt/venv/lib/python3.11/site-packages/nvidia /opt/nvidia
COPY --from=build /opt/flotilla/lib /opt/flotilla/lib
COPY --from=build /opt/flotilla/bin/flotilla-worker /usr/local/bin/
ENV LD_LIBRARY_PATH=/opt/flotilla/lib:/opt/torch/lib:/opt/nvidia/cu13/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 7700 7701
ENTRYPOINT ["/usr/local/bin/flotilla-worker"]
