"""`flotilla generate --prompt` (tokenizer and chat template applied in C++) gives the tokens and text
transformers gives, and a registry reference is pulled through the registry once per commit."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import binary  # noqa: F401  (tests/conftest.py)

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def reference_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = smollm2 / "checkpoint"
    return AutoTokenizer.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def transformers_generate(reference_model, input_ids):
    import torch

    tokenizer, model = reference_model
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=MAX_NEW_TOKENS,
                                do_sample=False)
    new_ids = output[0, input_ids.shape[1]:].tolist()
    return new_ids, tokenizer.decode(new_ids, skip_special_tokens=True)


@pytest.mark.parametrize("system", ["", "You are a terse assistant."])
def test_chat_prompt_matches_transformers(smollm2, flotilla, reference_model, system):
    prompt = "What is the capital of France?"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    input_ids = reference_model[0].apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                       return_dict=True)["input_ids"]
    expected_ids, expected_text = transformers_generate(reference_model, input_ids)
    extra = ["--system", system] if system else []
    result = flotilla.run("generate", str(smollm2 / "checkpoint"), "--chat", "--prompt", prompt, "--max-new-tokens",
                          str(MAX_NEW_TOKENS), *extra)
    output = json.loads(result.stdout)
    assert output["ids"] == expected_ids
    assert output["text"] == expected_text


def test_plain_prompt_matches_transformers(smollm2, flotilla, reference_model):
    prompt = "The three primary colors are"
    input_ids = reference_model[0](prompt, return_tensors="pt")["input_ids"]
    expected_ids, expected_text = transformers_generate(reference_model, input_ids)
    result = flotilla.run("generate", str(smollm2 / "checkpoint"), "--prompt", prompt, "--max-new-tokens",
                          str(MAX_NEW_TOKENS), "--ignore-eos")
    output = json.loads(result.stdout)
    assert output["ids"] == expected_ids and output["text"] == expected_text


def test_prompt_flags_are_checked(smollm2, flotilla):
    checkpoint = str(smollm2 / "checkpoint")
    result = flotilla.run("generate", checkpoint, check=False)
    assert result.returncode == 2 and "either --prompt-ids or --prompt" in result.stderr
    result = flotilla.run("generate", checkpoint, "--chat", "--prompt-ids", "1,2", check=False)
    assert result.returncode == 2 and "--chat needs --prompt" in result.stderr


def test_registry_reference_is_pulled_once_per_commit(smollm2, flotilla, start_service, tmp_path):
    registry = start_service("registry")
    folder = tmp_path / "smollm2"
    shutil.copytree(smollm2 / "checkpoint", folder)

    def push() -> str:
        result = flotilla.run("push", str(folder), "acme/smollm2", "--json", "--registry", registry.grpc_address)
        return json.loads(result.stdout)["commit_id"]

    def generate(reference: str):
        env = {**os.environ, "FLOTILLA_CACHE": str(tmp_path / "cache"), "FLOTILLA_REGISTRY": registry.grpc_address}
        import subprocess

        result = subprocess.run([str(flotilla.path), "generate", reference, "--prompt-ids", "1,504,3575", "--max-new-tokens",
                                 "4", "--ignore-eos"], capture_output=True, text=True, env=env)
        return result

    first_commit = push()
    local = flotilla.generate(smollm2 / "checkpoint", "1,504,3575", 4, "--ignore-eos")
    result = generate("acme/smollm2@main")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ids"] == local
    weights = tmp_path / "cache" / "acme" / "smollm2" / first_commit / "model.safetensors"
    pulled_at = weights.stat().st_mtime_ns
    assert generate("acme/smollm2").returncode == 0
    assert weights.stat().st_mtime_ns == pulled_at, "an unchanged revision was downloaded again"

    (folder / "README.md").write_text("a second commit on main\n")
    second_commit = push()
    assert generate("acme/smollm2@main").returncode == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "acme" / "smollm2").iterdir()) == sorted([first_commit, second_commit])

    result = generate("acme/missing@main")
    assert result.returncode != 0 and "acme/missing" in result.stderr
