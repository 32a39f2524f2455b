"""Static checks with the real linters: yamllint on every YAML file, shellcheck on every shell
script, hadolint on every Dockerfile
driven with a stand-in worker binary: the ranks' flags, signal forwarding, and one rank's death
ending the group."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy.conftest import REPOSITORY, run, tool


def tracked_files() -> list[Path]:
    result = run(["git", "ls-files", "-z"], cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr
    return [REPOSITORY / name for name in result.stdout.split("\0") if name]


def shell_scripts() -> list[Path]:
    scripts = []
    for path in tracked_files():
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as file:
            first_line = file.readline()
        if path.suffix == ".sh" or (first_line.startswith(b"#!") and first_line.rstrip().split(b"/")[-1].split(b" ")[-1]
                                     in (b"sh", b"bash", b"dash")):
            scripts.append(path)
    return scripts


def test_yamllint_passes_on_every_yaml_file():
    files = [str(p) for p in tracked_files() if p.suffix in (".yml", ".yaml") and "templates" not in p.parts]
    assert files
    result = run([tool("yamllint"), "--strict", "-c", str(REPOSITORY / ".yamllint.yml"), *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_every_script():
    scripts = shell_scripts()
    assert REPOSITORY / "tools" / "test" in scripts
    result = run([tool("shellcheck"), *map(str, scripts)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", sorted((REPOSITORY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_hadolint_passes_on_dockerfile(dockerfile):
    result = run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_images_run_as_non_root_from_the_shared_build_stage():
    for service in ("registry", "preprocess", "gateway", "worker"):
        text = (REPOSITORY / "docker" / f"{service}.Dockerfile").read_text()
        assert "FROM ${BUILD_IMAGE} AS build" in text, service
        assert "USER 10001:10001" in text, service


# A stand-in for flotilla-worker: logs its arguments, exits 0 on SIGTERM, and the rank named by
# STUB_EXIT_RANK exits with status 7 once every rank has started.
STUB_WORKER = """#!/usr/bin/env bash
rank=0
for argument in "$@"; do case "$argument" in --rank=*) rank="${argument#--rank=}" ;; esac; done
echo "$rank $*" >> "$STUB_LOG"
trap 'echo "$rank terminated" >> "$STUB_LOG"; exit 0' TERM
if [[ "$rank" == "${STUB_EXIT_RANK:-none}" ]]; then
  while (( $(wc -l < "$STUB_LOG") < FLOTILLA_TENSOR_PARALLEL_SIZE )); do sleep 0.05; done
  exit 7
fi
while true; do sleep 0.05; done
"""
