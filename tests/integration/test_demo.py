"""The README's first command, tools/demo, as a new user runs it: the mesh comes up, SmolLM2 and
MiniLM go into the registry, workers serve both from it, SmolLM2 answers the sample question through
the gateway and MiniLM embeds two sentences through /v1/embeddings. A second run uploads nothing,
keeps both served and answers the same."""
from __future__ import annotations

import json
import os
import subprocess

from conftest import BUILD_DIR, REPOSITORY, binary


def run_demo(environment: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(REPOSITORY / "tools" / "demo")], capture_output=True, text=True, env=environment,
                            timeout=1200)
    assert result.returncode == 0, f"tools/demo failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_demo_answers_from_a_model_pulled_from_the_local_registry(tmp_path):
    home = tmp_path / "flotilla-home"
    environment = {**os.environ, "FLOTILLA_HOME": str(home), "FLOTILLA_PORT_BASE": "0",
                   "FLOTILLA_BUILD_DIR": str(BUILD_DIR), "OMP_NUM_THREADS": "2"}
    environment.pop("FLOTILLA_REGISTRY", None)
    try:
        first = run_demo(environment)
        assert "assistant: The capital of France is Paris." in first.stdout, first.stdout[-2000:]
        assert "pushed demo/all-minilm-l6-v2@main" in first.stdout
        assert "serving smollm2" in first.stdout and "serving minilm" in first.stdout
        assert "2 embeddings of 384 dimensions" in first.stdout
        status = json.loads(subprocess.run([str(binary("flotilla")), "status", "--json", "--data-dir", str(home)],
                                           capture_output=True, text=True, timeout=60).stdout)
        assert sorted(worker["name"] for worker in status["workers"]) == ["minilm", "smollm2"]
        cached = list((home / "cache" / "demo" / "smollm2-135m-instruct").iterdir())
        assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()

        # The mesh's preprocess service resolves references at the mesh's registry.
        mesh = json.loads((home / "run" / "mesh.json").read_text())
        preprocess = next(service for service in mesh["services"] if service["name"] == "preprocess")
        tokenized = subprocess.run([str(binary("flotilla")), "tokenize", "demo/smollm2-135m-instruct", "--text", "Paris",
                                    "--server", preprocess["grpc_address"]], capture_output=True, text=True, timeout=120)
        assert tokenized.returncode == 0, tokenized.stderr
        local = subprocess.run([str(binary("flotilla")), "tokenize", str(REPOSITORY / "tests" / "fixtures" / "generated" /
                                "models" / "smollm2" / "checkpoint"), "--text", "Paris"], capture_output=True, text=True)
        assert json.loads(tokenized.stdout)["ids"] == json.loads(local.stdout)["ids"]

        second = run_demo(environment)
        assert "The mesh is already running." in second.stdout
        assert second.stdout.count("0 B uploaded") == 2, second.stdout[-2000:]
        assert "assistant: The capital of France is Paris." in second.stdout
        assert "smollm2 is already served" in second.stderr
    finally:
        subprocess.run([str(binary("flotilla")), "down", "--data-dir", str(home)], capture_output=True, timeout=120)
