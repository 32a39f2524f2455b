"""The flotilla CLI's local mesh: up, status, down, as a user runs them, and their bad input."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from conftest import binary


def flotilla(*arguments: str, data_dir=None, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [str(binary("flotilla")), *arguments]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; /proc still lists it until its parent (init) reaps it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def mesh_dir(tmp_path):
    data_dir = tmp_path / "flotilla-home"
    yield data_dir
    flotilla("down", data_dir=data_dir)


def test_up_status_down(mesh_dir):
    up = flotilla("up", "--port-base", "0", data_dir=mesh_dir)
    assert up.returncode == 0, up.stderr
    assert up.stdout.count("SERVING") == 4

    status = flotilla("status", "--json", data_dir=mesh_dir)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert [service["name"] for service in document["services"]] == ["registry", "preprocess", "worker", "gateway"]
    assert all(service["health"] == "SERVING" for service in document["services"])
    assert all(service["grpc_address"].startswith("127.0.0.1:") for service in document["services"])
    pids = [service["pid"] for service in document["services"]]

    table = flotilla("status", data_dir=mesh_dir)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:4] == ["SERVICE", "PID", "GRPC", "HTTP"]

    again = flotilla("up", "--port-base", "0", data_dir=mesh_dir)
    assert again.returncode == 0
    assert "already running" in again.stdout

    down = flotilla("down", data_dir=mesh_dir)
    assert down.returncode == 0
    assert "stopped 4 services" in down.stdout
    assert not any(process_exists(pid) for pid in pids)

    after = flotilla("status", data_dir=mesh_dir)
    assert after.returncode == 3
    assert "no mesh is running" in after.stderr


def test_up_with_a_port_in_use_fails_in_one_line_and_leaves_nothing_running(mesh_dir):
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        base = occupant.getsockname()[1]  # the registry's gRPC port is taken
        up = flotilla("up", "--port-base", str(base), "--timeout", "30", data_dir=mesh_dir)
    assert up.returncode == 1
    assert "registry" in up.stderr and "in use" in up.stderr
    assert len(up.stderr.strip().splitlines()) == 1
    assert flotilla("status", data_dir=mesh_dir).returncode == 3
    # Nothing of ours is left listening or running.
    leftovers = subprocess.run(["pgrep", "-f", f"--data_dir={mesh_dir}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_up_with_an_unusable_data_directory_is_one_clear_line(tmp_path):
    plain_file = tmp_path / "not-a-directory"
    plain_file.write_text("x")
    up = flotilla("up", "--port-base", "0", data_dir=plain_file)
    assert up.returncode == 1
    assert "not a directory" in up.stderr
    assert len(up.stderr.strip().splitlines()) == 1


def test_unknown_flag_is_refused(tmp_path):
    result = flotilla("up", "--no-such-flag", data_dir=tmp_path)
    assert result.returncode != 0
    assert "--no-such-flag" in result.stderr


def test_down_without_a_mesh_says_so(tmp_path):
    result = flotilla("down", data_dir=tmp_path / "empty")
    assert result.returncode == 0
    assert "no mesh is running" in result.stdout


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_every_command_has_help(command):
    result = flotilla(command, "--help")
    assert result.returncode == 0
    assert "--data-dir" in result.stdout
