# syntax=docker/dockerfile:1
# flotilla-preprocess: image processing runs as LibTorch ops, so it carries the torch wheel's
# libraries (CPU kernels are used; CUDA ones when a GPU is given to the pod).
#   docker build -f docker/preprocess.Dockerfile --build-arg BUILD_IMAGE=flotilla-build:0.1.0 -t flotilla-preprocess:0.1.0 .
ARG BUILD_IMAGE=flotilla-build:latest
FROM ${BUILD_IMAGE} AS build

FROM debian:12.12-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libabsl20220623 libbrotli1 libc-ares2 libcpp-httplib0.11 libgrpc++1.51 libgrpc29 \
    libprometheus-cpp-core1.0 libprotobuf32 libre2-9 libssl3 libicu72 libpcre2-8-0 \
    libjpeg62-turbo libpng16-16 libwebp7 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 flotilla && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flotilla
COPY --from=build /opt/venv/lib/python3.11/site-packages/torch/lib /opt/torch/lib
COPY --from=build /opt/venv/lib/python3.11/site-packages/nvidia /opt/nvidia
COPY --from=build /opt/flotilla/lib /opt/flotilla/lib
COPY --from=build /opt/flotilla/bin/flotilla-preprocess /usr/local/bin/
ENV LD_LIBRARY_PATH=/opt/flotilla/lib:/opt/torch/lib:/opt/nvidia/cu13/lib
USER 10001:10001
EXPOSE 7700 7701
ENTRYPOINT ["/usr/local/bin/flotilla-preprocess"]
