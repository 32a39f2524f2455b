"""Tensor-parallel worker groups through the gateway (issue #12): `flotilla-worker
--tensor_parallel_size N` is an agent that starts N rank processes (rank 0 schedules and speaks gRPC,
the others follow its steps over Gloo); greedy outputs equal transformers; a rank's death costs no
request (the gateway migrates them) and the agent brings the group back.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import binary
from serving.helpers import (assert_takes_traffic, concurrently, generate_ids, metric, rank_pids, serve_and_compare_greedy,
                             smollm2_prompts, stream_killing_once, transformers_greedy)

ARCHITECTURE_CASES = ["llama_gqa_tied", "qwen2_sliding", "qwen3_qk_norm", "mistral_sliding", "phi3_gqa_partial_rotary",
                      "gemma2_softcap_sliding", "gemma3_gqa", "gpt2_tied"]
FOUR_RANK_CASES = ["llama_mha_untied", "gemma3_mha_linear_rope_softcap", "gpt2_untied_scaled", "phi3_gqa_partial_rotary"]


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_every_decoder_architecture_serves_greedy_like_transformers_on_2_and_4_ranks(mesh, decoder_fixtures,
                                                                                    world_size):
    # At 4 ranks, the fixtures whose heads (or, for phi3, whose projections) divide by 4.
    cases = ARCHITECTURE_CASES if world_size == 2 else FOUR_RANK_CASES
    serve_and_compare_greedy(mesh, decoder_fixtures, cases, [f"--tensor_parallel_size={world_size}"], seed=2,
                             prompts_per_case=4, label=f"{world_size} ranks")
    # Each replica is an agent and its ranks.
    for case in cases:
        assert len(rank_pids(mesh.workers[case][0].process.pid)) == world_size


@pytest.mark.slow
def test_smollm2_serves_on_3_ranks_and_2_ranks_are_refused_for_its_9_heads(mesh, smollm2_folder):
    with pytest.raises(RuntimeError) as refused:
        mesh.serve(smollm2_folder, "smollm2-2", "--tensor_parallel_size=2", wait=False)
    assert "tensor-parallel size 2 does not divide LlamaForCausalLM's num_attention_heads (9)" in str(refused.value)

    worker = mesh.serve(smollm2_folder, "smollm2", "--tensor_parallel_size=3", "--kv_cache_memory=67108864")
    prompts = smollm2_prompts(smollm2_folder, 4, seed=3)
    expected = transformers_greedy(smollm2_folder, prompts, [16] * len(prompts))
    results = concurrently(lambda prompt: generate_ids(mesh, "smollm2", prompt, 16), [(p,) for p in prompts])
    assert [ids for ids, _ in results] == expected
    # Rank 0 exports every rank's resident memory.
    metrics_url = worker.http_url("/metrics")
    deadline = time.monotonic() + 10
    while metric(metrics_url, "flotilla_worker_rank_resident_memory_bytes", 'rank="2"') == 0:
        assert time.monotonic() < deadline, "rank 2's memory never reached rank 0's metrics"
        generate_ids(mesh, "smollm2", prompts[0], 2)
        time.sleep(0.5)


def test_a_rank_that_cannot_reach_the_store_fails_within_a_bounded_time(decoder_fixtures, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [str(binary("flotilla-worker")), f"--model={decoder_fixtures / 'llama_gqa_tied'}", "--rank=1",
         "--tensor_parallel_size=2", f"--master_port={port}", "--tensor_parallel_timeout=3"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - started < 45
    assert f"could not join the group through the store at 127.0.0.1:{port}" in result.stderr + result.stdout


@pytest.mark.slow
def test_each_rank_holds_about_half_of_the_weights_on_2_ranks(mesh, tmp_path):
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    # A checkpoint whose projections dominate (512 MB of float32), so that a rank's share shows.
    config = transformers.LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                                      num_attention_heads=16, num_key_value_heads=8, vocab_size=1024,
                                      max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    folder = tmp_path / "wide-llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    checkpoint_bytes = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    assert checkpoint_bytes > 450e6

    one = mesh.serve(folder, "wide-1", "--kv_cache_memory=8388608")
    two = mesh.serve(folder, "wide-2", "--tensor_parallel_size=2", "--kv_cache_memory=8388608")
    generate_ids(mesh, "wide-1", [1, 2, 3], 2)
    generate_ids(mesh, "wide-2", [1, 2, 3], 2)
    whole = resident_bytes(rank_pids(one.process.pid)[0])
    for pid in rank_pids(two.process.pid):
        # Ideally whole - checkpoint / 2; the replicated norms and embeddings are small here.
        assert resident_bytes(pid) < whole - 0.35 * checkpoint_bytes, (resident_bytes(pid), whole, checkpoint_bytes)


@pytest.mark.slow
def test_sigkill_of_a_non_zero_rank_mid_generation_loses_no_request_and_the_group_comes_back(mesh, smollm2_folder):
    group = mesh.serve(smollm2_folder, "smollm2", "--tensor_parallel_size=3", "--kv_cache_memory=134217728", replica=0)
    mesh.serve(smollm2_folder, "smollm2", "--kv_cache_memory=134217728", replica=1)
    prompts = smollm2_prompts(smollm2_folder, 16, seed=12)
    budget = 40
    expected = transformers_greedy(smollm2_folder, prompts, [budget] * len(prompts), eos=False)
    ranks_before = rank_pids(group.process.pid)
    assert len(ranks_before) == 3

    streamed, finishes = stream_killing_once(mesh, prompts, budget, kill=lambda: os.kill(ranks_before[1], signal.SIGKILL))
    for index, (tokens, reference) in enumerate(zip(streamed, expected)):
        assert tokens == reference, f"request {index}"
    assert finishes == ["length"] * len(prompts)

    # The agent restarted all three ranks, and the group registered again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ranks_now = rank_pids(group.process.pid)
        if len(ranks_now) == 3 and not set(ranks_now) & set(ranks_before) and mesh.replicas("smollm2") == 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the group did not come back: ranks {rank_pids(group.process.pid)}, "
                             f"replicas {mesh.replicas('smollm2')}")
    assert group.process.poll() is None  # the agent itself lived on
    # It takes traffic again: its new rank 0 (new ports, in the rewritten ready file) serves requests.
    ready = json.loads((mesh.directory / "smollm2-0" / "worker.ready").read_text())
    assert_takes_traffic(mesh, f"http://{ready['http_address']}/metrics", prompts, expected)
