"""Tensor parallelism (issue #12): a forward split across N real processes over Gloo — each rank
loading only its slice of each weight by the model's plan, the collectives running in the layers —
gives the logits of one process, for random checkpoints of every decoder architecture written by
transformers; and what cannot be split is refused with a reason.

Each rank is a `flotilla-torch forward ... --tensor-parallel-size N --rank r` process; rank 0 hosts
the rendezvous store and writes the outputs, as torchrun's rank 0 would.
"""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import binary

INPUT_IDS = "5,6,7,8,9,10,11,12;3,140,27,99,1,12,44,2"


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def sharded_forward(model: Path, output: Path, world_size: int, *extra: str, timeout: float = 180):
    """Runs one forward over `world_size` rank processes; returns (rank 0's outputs or None, results)."""
    port = str(free_port())
    processes = []
    for rank in range(world_size):
        command = [str(binary("flotilla-torch")), "forward", str(model), "--input-ids", INPUT_IDS,
                   "--output", str(output)]
        if world_size > 1:
            command += ["--tensor-parallel-size", str(world_size), "--rank", str(rank), "--master-port", port]
        processes.append(subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}))
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append((process.returncode, stderr))
    outputs = load_file(str(output)) if results[0][0] == 0 else None
    return outputs, results


def decoder_cases(decoder_fixtures: Path) -> list[Path]:
    return sorted(path for path in decoder_fixtures.iterdir() if (path / "config.json").exists())


def heads(folder: Path) -> tuple[int, int]:
    config = json.loads((folder / "config.json").read_text())
    attention = config.get("num_attention_heads", config.get("n_head"))
    return attention, config.get("num_key_value_heads") or attention


@pytest.mark.slow
def test_every_decoder_gives_the_same_logits_on_2_and_4_ranks(decoder_fixtures, tmp_path):
    checked = {2: [], 4: []}
    for case in decoder_cases(decoder_fixtures):
        single, results = sharded_forward(case, tmp_path / f"{case.name}-1.safetensors", 1)
        assert single is not None, results
        attention, key_value = heads(case)
        for world_size in (2, 4):
            if attention % world_size or key_value % world_size:
                continue
            sharded, results = sharded_forward(case, tmp_path / f"{case.name}-{world_size}.safetensors", world_size)
            assert sharded is not None, f"{case.name} at {world_size} ranks: {results}"
            # The same float32 arithmetic summed in another order (each rank's partial products, then
            # the all-reduce): torch.testing's float32 tolerance, |a - b| <= 1e-5 + 1.3e-6 |b|. An
            # absolute 1e-5 alone held on one CPU and failed by 1.1e-5 on another (logits near 10).
            torch.testing.assert_close(sharded["logits"], single["logits"], rtol=1.3e-6, atol=1e-5,
                                       msg=lambda detail: f"{case.name} at {world_size} ranks: {detail}")
            assert all(code == 0 for code, _ in results), results
            checked[world_size].append(case.name)
    # Every architecture ran split in two.
    for architecture in ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3", "gpt2"):
        assert any(name.startswith(architecture) for name in checked[2]), (architecture, checked)
    # And at 4 ranks every architecture whose fixture has heads and key/value heads divisible by 4.
    for architecture in ("llama", "qwen3", "gemma2", "gemma3", "gpt2"):
        assert any(name.startswith(architecture) for name in checked[4]), (architecture, checked)


def test_a_vocab_parallel_embedding_and_its_tied_head_give_the_same_logits(decoder_fixtures, tmp_path):
    case = decoder_fixtures / "llama_gqa_tied"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "embed_tokens": "vocab_parallel",
        "layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.up_proj": "colwise", "layers.*.mlp.down_proj": "rowwise",
        "lm_head": "colwise_gather_output"}))
    single, results = sharded_forward(case, tmp_path / "one.safetensors", 1)
    assert single is not None, results
    sharded, results = sharded_forward(case, tmp_path / "two.safetensors", 2, "--tp-plan", str(plan))
    assert sharded is not None, results
    torch.testing.assert_close(sharded["logits"], single["logits"], rtol=1.3e-6, atol=1e-5)


def refusal(case: Path, tmp_path: Path, world_size: int, *extra: str) -> str:
    outputs, results = sharded_forward(case, tmp_path / "refused.safetensors", world_size, *extra, timeout=120)
    assert outputs is None
    assert all(code != 0 for code, _ in results), results
    return results[0][1]


def test_a_size_that_does_not_divide_the_heads_is_refused_with_the_reason(decoder_fixtures, tmp_path):
    message = refusal(decoder_fixtures / "llama_gqa_tied", tmp_path, 3)
    assert "tensor-parallel size 3 does not divide" in message and "num_attention_heads (4)" in message


def test_a_size_that_does_not_divide_a_tensor_is_refused_naming_it(decoder_fixtures, tmp_path):
    # phi3 runs attention whole (transformers' plan gathers qkv_proj), so heads do not bound its
    # size; its projections' 64 input features do not split 5 ways.
    message = refusal(decoder_fixtures / "phi3_gqa_partial_rotary", tmp_path, 5)
    assert "ShardParameter(model.layers.0." in message, message
    assert "does not divide into 5 shards (tensor-parallel size 5)" in message, message


def test_a_plan_naming_no_module_is_refused(decoder_fixtures, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers.*.self_attn.q_proj": "colwise", "layers.*.attention.wq": "colwise"}))
    message = refusal(decoder_fixtures / "llama_mha_untied", tmp_path, 2, "--tp-plan", str(plan))
    assert 'tensor-parallel plan entry "layers.*.attention.wq"' in message and "names no module" in message


def test_an_unknown_strategy_is_refused_with_the_known_ones(decoder_fixtures, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers.*.self_attn.q_proj": "diagonal"}))
    message = refusal(decoder_fixtures / "llama_mha_untied", tmp_path, 2, "--tp-plan", str(plan))
    assert 'unknown tensor-parallel style "diagonal"' in message and "colwise" in message
