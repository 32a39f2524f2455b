#!/usr/bin/env bash
# Builds the shared build stage, then every service image from it (docker/README.md).
#   docker/build-images.sh [TAG]      # default tag: the chart's appVersion
# Environment: IMAGE_PREFIX (default "flotilla": images are <prefix>-<service>:<tag>), DOCKER (default docker).
set -euo pipefail
repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$repository/helm/flotilla/Chart.yaml")}"
prefix="${IMAGE_PREFIX:-flotilla}"
docker="${DOCKER:-docker}"
"$docker" build -f "$repository/docker/build.Dockerfile" -t "$prefix-build:$tag" "$repository"
for service in registry preprocess gateway worker; do
  "$docker" build -f "$repository/docker/$service.Dockerfile" --build-arg "BUILD_IMAGE=$prefix-build:$tag" \
    -t "$prefix-$service:$tag" "$repository"
done
