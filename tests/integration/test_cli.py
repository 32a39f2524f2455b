"""The flotilla CLI's local mesh: up, status, down, serve, unserve, chat, as a user runs them, and
their bad input — with the real services, and SmolLM2 served by real workers."""
from __future__ import annotations

import json
import os
import socket
import subprocess

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


# --- serving, with the real gateway and workers (SmolLM2 float32) ---

@pytest.fixture(scope="module")
def smollm2_checkpoint():
    from models.conftest import run_script, GENERATED  # noqa: PLC0415

    directory = GENERATED / "smollm2"
    run_script("make_smollm2.py", str(directory))
    return directory / "checkpoint"


@pytest.fixture
def running_mesh(mesh_dir):
    """`up`; yields a function that runs `flotilla ARGS --data-dir mesh_dir`."""
    def run(*arguments, **options):
        return flotilla(*arguments, data_dir=mesh_dir, **options)

    up = run("up", "--port-base", "0")
    assert up.returncode == 0, up.stderr
    yield run
    run("down")


def gateway_of(status: dict) -> dict:
    return next(service for service in status["services"] if service["name"] == "gateway")


@pytest.mark.slow
def test_serve_status_chat_unserve(running_mesh, mesh_dir, smollm2_checkpoint):
    served = running_mesh("serve", str(smollm2_checkpoint), "--name", "smollm2", "--replicas", "2",
                          "--max-num-seqs", "8", "--kv-cache-memory", str(64 << 20), "--json", timeout=300)
    assert served.returncode == 0, served.stderr
    document = json.loads(served.stdout)
    status = json.loads(running_mesh("status", "--json").stdout)
    gateway = gateway_of(status)
    assert document["name"] == "smollm2" and document["replicas"] == 2
    assert document["openai_base_url"] == f"http://{gateway['http_address']}/v1"
    assert document["grpc_address"] == gateway["grpc_address"]
    for replica in (0, 1):
        assert (mesh_dir / "logs" / f"worker-smollm2-{replica}.log").exists()

    workers = status["workers"]
    assert [(worker["name"], worker["replica"]) for worker in workers] == [("smollm2", 0), ("smollm2", 1)]
    assert all(worker["health"] == "SERVING" for worker in workers)
    # 64 MiB of KV blocks: 16 tokens x 30 layers x 3 KV heads x 64 x 2 (keys, values) x 4 bytes each.
    assert all(worker["load"]["kv_blocks_total"] == (64 << 20) // 737280 for worker in workers)
    assert all(worker["load"]["kv_blocks_used"] == 0 and worker["load"]["draining"] is False for worker in workers)
    table = running_mesh("status").stdout
    assert "smollm2" in table and f"0/{(64 << 20) // 737280}" in table

    again = running_mesh("serve", str(smollm2_checkpoint), "--name", "smollm2")
    assert again.returncode == 4 and "smollm2 is already served" in again.stderr

    answer = running_mesh("chat", "smollm2", "What is the capital of France? Answer in one sentence.")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "The capital of France is Paris.\n"
    with_system = running_mesh("chat", "smollm2", "What is the capital of France?", "--system", "Answer in one word.",
                               "--max-tokens", "8")
    assert with_system.returncode == 0 and with_system.stdout.strip()
    # Without a message: one turn per line until /exit.
    conversation = running_mesh("chat", "smollm2", "--max-tokens", "8", input="Hello!\n\nName a color.\n/exit\nignored\n")
    assert conversation.returncode == 0, conversation.stderr
    assert len([line for line in conversation.stdout.splitlines() if line.strip()]) >= 2
    unknown = running_mesh("chat", "no-such-model", "Hello")
    assert unknown.returncode == 1 and "serves no model named no-such-model" in unknown.stderr

    pids = [worker["pid"] for worker in workers]
    stopped = running_mesh("unserve", "smollm2")
    assert stopped.returncode == 0 and "stopped 2 workers of smollm2" in stopped.stdout
    assert not any(process_exists(pid) for pid in pids)
    assert json.loads(running_mesh("status", "--json").stdout)["workers"] == []
    assert "served: none" in running_mesh("unserve", "smollm2").stderr


@pytest.mark.slow
def test_serve_a_tensor_parallel_replica_shows_its_ranks_answers_and_unserves_them_all(running_mesh,
                                                                                    smollm2_checkpoint):
    served = running_mesh("serve", str(smollm2_checkpoint), "--name", "smollm2", "--tensor-parallel-size", "3",
                          "--kv-cache-memory", str(32 << 20), timeout=300)
    assert served.returncode == 0, served.stderr
    [worker] = json.loads(running_mesh("status", "--json").stdout)["workers"]
    assert worker["health"] == "SERVING"
    assert [rank["rank"] for rank in worker["ranks"]] == [0, 1, 2]
    rank_pids = [rank["pid"] for rank in worker["ranks"]]
    assert ",".join(map(str, rank_pids)) in running_mesh("status").stdout
    answer = running_mesh("chat", "smollm2", "What is the capital of France? Answer in one sentence.")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "The capital of France is Paris.\n"
    stopped = running_mesh("unserve", "smollm2")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(process_exists(pid) for pid in [worker["pid"], *rank_pids])


def test_serve_a_folder_that_is_no_model_fails_with_the_workers_log(running_mesh, tmp_path):
    (tmp_path / "models" / "Not-A-Model").mkdir(parents=True)
    result = running_mesh("serve", "models/Not-A-Model/", cwd=tmp_path)
    assert result.returncode == 1
    assert "worker 0 of not-a-model exited during start-up" in result.stderr
    assert "config.json" in result.stderr  # the worker's own reason, from its log
    assert json.loads(running_mesh("status", "--json").stdout)["workers"] == []


@pytest.mark.slow
def test_up_serve_then_down_stops_the_workers_first(mesh_dir, smollm2_checkpoint):
    up = flotilla("up", "--port-base", "0", "--serve", f"{smollm2_checkpoint}=chatty", data_dir=mesh_dir, timeout=300)
    assert up.returncode == 0, up.stderr
    assert "serving chatty" in up.stdout
    status = json.loads(flotilla("status", "--json", data_dir=mesh_dir).stdout)
    assert [worker["name"] for worker in status["workers"]] == ["chatty"]
    # `up --serve` on a running mesh leaves a served name as it is.
    again = flotilla("up", "--serve", f"{smollm2_checkpoint}=chatty", data_dir=mesh_dir)
    assert again.returncode == 0 and "chatty is already served" in again.stdout

    down = flotilla("down", data_dir=mesh_dir)
    assert down.returncode == 0 and "stopped 1 worker and 3 services" in down.stdout, down.stdout
    assert not any(process_exists(worker["pid"]) for worker in status["workers"])
