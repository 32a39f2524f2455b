"""Static checks with the real linters: yamllint on every YAML file, shellcheck on every shell
script, hadolint on every Dockerfile; and docker/worker-group.sh (the worker pods' entrypoint)
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
    assert REPOSITORY / "tools" / "test" in scripts and REPOSITORY / "docker" / "worker-group.sh" in scripts
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


@pytest.fixture
def worker_group(tmp_path):
    stub = tmp_path / "flotilla-worker"
    stub.write_text(STUB_WORKER)
    stub.chmod(0o755)
    log = tmp_path / "ranks.log"
    log.touch()

    def start(size: int, *args: str, exit_rank: str = "none") -> tuple[subprocess.Popen, Path]:
        env = {**os.environ, "FLOTILLA_WORKER_BINARY": str(stub), "FLOTILLA_TENSOR_PARALLEL_SIZE": str(size),
               "STUB_LOG": str(log), "STUB_EXIT_RANK": exit_rank}
        process = subprocess.Popen([str(REPOSITORY / "docker" / "worker-group.sh"), *args], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return process, log

    return start


def wait_for_lines(log: Path, count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} lines in {log}, got: {log.read_text()}")


def test_worker_group_starts_every_rank_with_its_flags(worker_group, tmp_path):
    process, log = worker_group(4, f"--data_dir={tmp_path}/data", "--model=acme/llama@main")
    lines = sorted(wait_for_lines(log, 4))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    for rank, line in enumerate(lines):
        assert f"--tensor_parallel_size=4 --rank={rank} --master_address=127.0.0.1 --master_port=29500" in line
        assert "--model=acme/llama@main" in line
        if rank == 0:
            assert "127.0.0.1:0" not in line   # rank 0 keeps the pod's ports
        else:
            assert f"--grpc_listen=127.0.0.1:0 --http_listen=127.0.0.1:0 --data_dir={tmp_path}/data/rank-{rank}" in line


def test_sigterm_reaches_every_rank(worker_group):
    process, log = worker_group(3)
    wait_for_lines(log, 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    terminated = [line for line in log.read_text().splitlines() if line.endswith("terminated")]
    assert sorted(terminated) == ["0 terminated", "1 terminated", "2 terminated"]


def test_one_rank_exiting_stops_the_group_with_its_status(worker_group):
    process, log = worker_group(4, exit_rank="2")
    assert process.wait(timeout=20) == 7
    terminated = sorted(line for line in log.read_text().splitlines() if line.endswith("terminated"))
    assert terminated == ["0 terminated", "1 terminated", "3 terminated"]
    assert "exited with status 7; stopping the group" in process.stdout.read()


def test_one_rank_execs_the_worker_itself(worker_group):
    process, log = worker_group(1, "--model=acme/small")
    lines = wait_for_lines(log, 1)
    assert lines == ["0 --model=acme/small"]   # no tensor-parallel flags for a single rank
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0


def test_a_bad_group_size_is_refused(worker_group):
    process, _ = worker_group(0)
    assert process.wait(timeout=20) == 2
    assert "FLOTILLA_TENSOR_PARALLEL_SIZE: expected a positive integer but got '0'" in process.stdout.read()
