"""The flotilla CLI's local mesh: up, status, down, serve, unserve, chat, as a user runs them, and
their bad input. The serving tests run `flotilla` beside stand-in gateway and worker processes
(fake_serving.py) that speak the gRPC contract, so they check the CLI's side alone; the end-to-end
tests with real models live with the worker and gateway."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import binary


def flotilla(*arguments: str, data_dir=None, timeout: float = 120, program=None, env=None, input=None,
             cwd=None) -> subprocess.CompletedProcess:
    command = [str(program or binary("flotilla")), *arguments]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, input=input, cwd=cwd)


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
    assert up.stdout.count("SERVING") == 3

    status = flotilla("status", "--json", data_dir=mesh_dir)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    # Workers come from `flotilla serve`, not from `up`.
    assert [service["name"] for service in document["services"]] == ["registry", "preprocess", "gateway"]
    assert document["workers"] == []
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
    assert "stopped 3 services" in down.stdout
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


@pytest.mark.parametrize("command", ["up", "down", "status", "serve", "unserve", "chat"])
def test_every_command_has_help(command):
    result = flotilla(command, "--help")
    assert result.returncode == 0
    assert "--data-dir" in result.stdout


def test_serve_without_a_mesh_says_to_start_one(tmp_path):
    result = flotilla("serve", "acme/tiny-llama", data_dir=tmp_path / "empty")
    assert result.returncode == 1
    assert "no mesh is running" in result.stderr and "flotilla up" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_refuses_what_is_neither_a_folder_nor_a_reference(tmp_path):
    result = flotilla("serve", "not a reference!", data_dir=tmp_path / "empty")
    assert result.returncode == 2
    assert "neither a folder nor a registry reference" in result.stderr


def test_unserve_of_an_unknown_name_lists_what_is_served(mesh_dir):
    assert flotilla("up", "--port-base", "0", data_dir=mesh_dir).returncode == 0
    result = flotilla("unserve", "no-such-model", data_dir=mesh_dir)
    assert result.returncode == 3
    assert "no model named no-such-model is served (served: none)" in result.stderr


def test_chat_without_a_mesh_or_gateway_says_how_to_give_one(tmp_path):
    result = flotilla("chat", "tiny-llama", "Hello", data_dir=tmp_path / "empty", env={**os.environ, "FLOTILLA_GATEWAY": ""})
    assert result.returncode == 1
    assert "--gateway" in result.stderr and "flotilla up" in result.stderr


def test_chat_with_a_model_the_real_gateway_does_not_serve_is_one_clear_line(mesh_dir):
    # Passes once the gateway implements Generate (it answers NOT_FOUND for a model no worker serves).
    assert flotilla("up", "--port-base", "0", data_dir=mesh_dir).returncode == 0
    result = flotilla("chat", "no-such-model", "Hello", data_dir=mesh_dir)
    assert result.returncode == 1
    assert "serves no model named no-such-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


# --- serving, against stand-in gateway and worker processes (fake_serving.py) ---

@pytest.fixture
def stand_in_bin(tmp_path, stubs):
    """A bin folder with the real flotilla, registry and preprocess and the stand-ins for the gateway
    and the worker; returns (flotilla, env). The stand-ins are started under their binaries' names, as
    `flotilla` recognises its processes by name."""
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(binary("flotilla"), folder / "flotilla")  # a copy: flotilla finds the services beside itself
    for name in ("registry", "preprocess"):
        (folder / f"flotilla-{name}").symlink_to(binary(f"flotilla-{name}"))
    fake = Path(__file__).resolve().parent / "fake_serving.py"
    for role in ("gateway", "worker"):
        wrapper = folder / f"flotilla-{role}"
        wrapper.write_text(f"#!/bin/bash\nexec -a flotilla-{role} {sys.executable} {fake} {role} \"$@\"\n")
        wrapper.chmod(0o755)
    stubs_dir = Path(stubs.gateway_pb2.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs_dir), os.environ.get("PYTHONPATH", "")])}
    env.pop("FLOTILLA_GATEWAY", None)
    return folder / "flotilla", env


@pytest.fixture
def stand_in_mesh(stand_in_bin, mesh_dir):
    """`up` with the stand-ins; yields a function that runs `flotilla ARGS --data-dir mesh_dir`."""
    program, env = stand_in_bin

    def run(*arguments, **options):
        return flotilla(*arguments, data_dir=mesh_dir, program=program, env=env, **options)

    up = run("up", "--port-base", "0")
    assert up.returncode == 0, up.stderr
    yield run
    run("down")


def gateway_of(status: dict) -> dict:
    return next(service for service in status["services"] if service["name"] == "gateway")


def test_serve_status_chat_unserve_with_stand_in_workers(stand_in_mesh, mesh_dir):
    served = stand_in_mesh("serve", "acme/Tiny-Llama@v1", "--replicas", "2", "--dtype", "bfloat16",
                           "--max-num-seqs", "8", "--json")
    assert served.returncode == 0, served.stderr
    document = json.loads(served.stdout)
    status = json.loads(stand_in_mesh("status", "--json").stdout)
    gateway = gateway_of(status)
    assert document["name"] == "tiny-llama" and document["replicas"] == 2
    assert document["openai_base_url"] == f"http://{gateway['http_address']}/v1"
    assert document["grpc_address"] == gateway["grpc_address"]

    # Each worker got the mesh's addresses, its replica index, its own ports, and serve's flags.
    for replica in (0, 1):
        flags = json.loads((mesh_dir / f"worker-tiny-llama-{replica}" / "arguments.json").read_text())
        assert flags["model"] == "acme/Tiny-Llama@v1" and flags["served_model_name"] == "tiny-llama"
        assert flags["replica"] == str(replica) and flags["gateways"] == gateway["grpc_address"]
        assert flags["registry"] == status["services"][0]["grpc_address"]
        assert flags["dtype"] == "bfloat16" and flags["max_num_seqs"] == "8" and "task" not in flags
        assert flags["grpc_listen"] == "127.0.0.1:0"
        assert (mesh_dir / "logs" / f"worker-tiny-llama-{replica}.log").exists()

    workers = status["workers"]
    assert [(worker["name"], worker["replica"]) for worker in workers] == [("tiny-llama", 0), ("tiny-llama", 1)]
    assert all(worker["health"] == "SERVING" for worker in workers)
    assert all(worker["load"] == {"kv_blocks_used": 3, "kv_blocks_total": 64, "running": 1, "waiting": 2,
                                  "draining": False} for worker in workers)
    table = stand_in_mesh("status").stdout
    assert "tiny-llama" in table and "3/64" in table

    again = stand_in_mesh("serve", "acme/other", "--name", "tiny-llama")
    assert again.returncode == 4 and "tiny-llama is already served" in again.stderr

    answer = stand_in_mesh("chat", "tiny-llama", "Hello")
    assert (answer.returncode, answer.stdout) == (0, "[1] Hello\n"), answer.stderr
    with_system = stand_in_mesh("chat", "tiny-llama", "Hello", "--system", "Be brief.")
    assert with_system.stdout == "[2] Hello\n"
    # Without a message: one turn per line, the history growing by the question and the answer.
    conversation = stand_in_mesh("chat", "tiny-llama", input="one\n\ntwo\n/exit\nthree\n")
    assert (conversation.returncode, conversation.stdout) == (0, "[1] one\n[3] two\n"), conversation.stderr
    unknown = stand_in_mesh("chat", "no-such-model", "Hello")
    assert unknown.returncode == 1 and "serves no model named no-such-model" in unknown.stderr

    pids = [worker["pid"] for worker in workers]
    stopped = stand_in_mesh("unserve", "tiny-llama")
    assert stopped.returncode == 0 and "stopped 2 workers of tiny-llama" in stopped.stdout
    assert not any(process_exists(pid) for pid in pids)
    assert json.loads(stand_in_mesh("status", "--json").stdout)["workers"] == []
    assert "served: none" in stand_in_mesh("unserve", "tiny-llama").stderr


def test_serve_a_folder_passes_its_absolute_path_and_names_it_after_it(stand_in_mesh, mesh_dir, tmp_path):
    (tmp_path / "models" / "SmolLM2-135M").mkdir(parents=True)
    served = stand_in_mesh("serve", "models/SmolLM2-135M/", cwd=tmp_path)
    assert served.returncode == 0, served.stderr
    assert "serving smollm2-135m" in served.stdout and "/v1/chat/completions" in served.stdout
    flags = json.loads((mesh_dir / "worker-smollm2-135m-0" / "arguments.json").read_text())
    assert flags["model"] == str(tmp_path / "models" / "SmolLM2-135M")


def test_a_worker_that_cannot_start_fails_serve_with_its_log(stand_in_mesh):
    result = stand_in_mesh("serve", "acme/broken-model", "--replicas", "2")
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr
    assert "cannot load acme/broken-model: no such repository" in result.stderr
    status = json.loads(stand_in_mesh("status", "--json").stdout)
    assert status["workers"] == []


def test_up_serve_then_down_stops_the_workers_first(stand_in_bin, mesh_dir):
    program, env = stand_in_bin
    up = flotilla("up", "--port-base", "0", "--serve", "acme/tiny-llama=chatty", "--serve", "acme/tiny-llama",
                  data_dir=mesh_dir, program=program, env=env)
    assert up.returncode == 0, up.stderr
    assert "serving chatty" in up.stdout and "serving tiny-llama" in up.stdout
    status = json.loads(flotilla("status", "--json", data_dir=mesh_dir, program=program, env=env).stdout)
    assert sorted(worker["name"] for worker in status["workers"]) == ["chatty", "tiny-llama"]
    # `up --serve` on a running mesh leaves a served name as it is.
    again = flotilla("up", "--serve", "acme/tiny-llama=chatty", data_dir=mesh_dir, program=program, env=env)
    assert again.returncode == 0 and "chatty is already served" in again.stdout

    down = flotilla("down", data_dir=mesh_dir, program=program, env=env)
    assert down.returncode == 0 and "stopped 2 workers and 3 services" in down.stdout
    assert not any(process_exists(worker["pid"]) for worker in status["workers"])
