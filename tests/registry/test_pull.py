"""`flotilla pull` of a sharded checkpoint against a real registry process: a pull killed with
SIGKILL mid-file leaves only complete, verified files under their names (the rest as
<file>.incomplete), and the next pull resumes from the bytes kept and finishes byte for byte."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import binary  # tests/conftest.py
from registry_fixtures import push_json, registry, run_cli  # noqa: F401

MIB = 1 << 20


def sigkill_when(command: list[str], ready) -> bool:
    """Runs `command` and SIGKILLs it as soon as ready() holds; False if it ended first (60 s at most)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    process.wait()
    return killed

def test_pull_sigkilled_mid_file_shows_nothing_half_written_and_resumes(registry, tmp_path):  # noqa: F811
    source = tmp_path / "checkpoint"
    source.mkdir()
    shards = [f"model-0000{index}-of-00003.safetensors" for index in (1, 2, 3)]
    for name in shards:
        (source / name).write_bytes(os.urandom(48 * MIB))
    (source / "config.json").write_text('{"model_type": "llama"}')
    push_json(registry, source, "acme/sharded")

    target = tmp_path / "pulled"
    command = [str(binary("flotilla")), "pull", "acme/sharded", str(target), "--registry", registry.grpc_address]
    killed_partial = sigkill_when(command, lambda: any(
        partial.stat().st_size > 4 * MIB for partial in (target.glob("*.incomplete") if target.exists() else [])))
    assert killed_partial, "the pull finished before it could be killed mid-file"

    # Whatever carries its final name is complete and correct; the rest is <name>.incomplete.
    visible = {path.name for path in target.iterdir() if not path.name.endswith(".incomplete")}
    for name in visible:
        assert (target / name).read_bytes() == (source / name).read_bytes(), name
    kept = sum(path.stat().st_size for path in target.glob("*.incomplete"))
    assert kept > 4 * MIB

    result = json.loads(run_cli(registry, "pull", "acme/sharded", str(target), "--json").stdout)
    total = sum((source / name).stat().st_size for name in [*shards, "config.json"])
    assert result["files"] == 4
    # The bytes kept were not fetched again (re-hashed from disk instead).
    assert result["downloaded_bytes"] + result["cached_bytes"] <= total - kept, result
    for name in [*shards, "config.json"]:
        assert (target / name).read_bytes() == (source / name).read_bytes(), name
    assert not list(target.glob("*.incomplete"))


def test_ranged_pull_sigkilled_leaves_a_prefix_without_holes_and_resumes(registry, tmp_path):  # noqa: F811
    """A file of 64 MiB or more pulled alone arrives over two streams of 16 MiB ranges (Note [Ranged
    pull] in registry_client.cc) but is written in file order: whenever the pull is killed, its
    partial file is exactly a prefix of the file (a hole would read as zeros), and the next pull
    continues from it."""
    source = tmp_path / "checkpoint"
    source.mkdir()
    weights = os.urandom(96 * MIB + 12345)
    (source / "model.safetensors").write_bytes(weights)
    push_json(registry, source, "acme/ranged")

    target = tmp_path / "pulled"
    partial = target / "model.safetensors.incomplete"
    command = [str(binary("flotilla")), "pull", "acme/ranged", str(target), "--registry", registry.grpc_address]
    killed = sigkill_when(command, lambda: partial.exists() and partial.stat().st_size > 20 * MIB)  # past range 1
    assert killed, "the pull finished before it could be killed mid-file"
    assert not (target / "model.safetensors").exists()
    kept = partial.read_bytes()
    assert 20 * MIB < len(kept) < len(weights)
    assert kept == weights[:len(kept)]

    result = json.loads(run_cli(registry, "pull", "acme/ranged", str(target), "--json").stdout)
    assert result["downloaded_bytes"] == len(weights) - len(kept), result
    assert (target / "model.safetensors").read_bytes() == weights
    assert not partial.exists()

def test_pull_one_file_at_a_time_when_asked(registry, tmp_path):  # noqa: F811
    source = tmp_path / "checkpoint"
    source.mkdir()
    for index in (1, 2):
        (source / f"model-0000{index}-of-00002.safetensors").write_bytes(os.urandom(3 * MIB))
    push_json(registry, source, "acme/two")
    run_cli(registry, "pull", "acme/two", str(tmp_path / "serial"), "--parallel", "1")
    for path in source.iterdir():
        assert (tmp_path / "serial" / path.name).read_bytes() == path.read_bytes()
    refused = run_cli(registry, "pull", "acme/two", str(tmp_path / "none"), "--parallel", "0", check=False)
    assert refused.returncode == 2 and "--parallel must be at least 1" in refused.stderr
