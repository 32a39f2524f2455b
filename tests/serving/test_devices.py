"""Where a worker runs its model (`--device`, services/worker/device.h): cpu by default, `cuda`
(rank r of a group on cuda:r, collectives over NCCL, the step messages over a Gloo group beside it)
or `cuda:N` for a one-rank replica. A device that cannot be used is refused at start with the
reason, before any weight is read. The GPU tests run where torch sees GPUs (the prepared GPU check,
tools/gpu/check.sh); without one they are skipped and the refusal is checked instead.
"""
from __future__ import annotations

import pytest
import torch

from serving.helpers import serve_and_compare_greedy

GPU_CASES = ["llama_gqa_tied", "qwen3_qk_norm", "mistral_sliding", "gemma2_softcap_sliding", "gpt2_tied",
             "phi3_gqa_partial_rotary"]


@pytest.mark.parametrize(("flags", "reason"), [
    (["--device=gpu"], 'must be cpu, cuda or cuda:N, got "gpu"'),
    (["--device=cuda:x"], 'must be cpu, cuda or cuda:N, got "cuda:x"'),
    (["--device=cuda:1", "--tensor_parallel_size=2"], "needs one per rank: use --device cuda"),
])
def test_a_device_that_cannot_be_named_is_refused_at_start(mesh, decoder_fixtures, flags, reason):
    with pytest.raises(RuntimeError) as refused:
        mesh.serve(decoder_fixtures / "llama_gqa_tied", "tiny", *flags)
    assert reason in str(refused.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the CUDA tests below run instead")
def test_cuda_without_a_visible_gpu_is_refused_with_the_reason(mesh, decoder_fixtures):
    with pytest.raises(RuntimeError) as refused:
        mesh.serve(decoder_fixtures / "llama_gqa_tied", "tiny", "--device=cuda")
    # A build with the CUDA toolkit loads LibTorch's CUDA half and finds no device; one without it
    # says it cannot load CUDA support. Either way the worker says why and exits.
    message = str(refused.value)
    assert "no CUDA device is visible" in message or "cannot load CUDA support" in message, message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run by tools/gpu/check.sh where one is lent)")
def test_a_cuda_worker_serves_greedy_like_transformers(mesh, decoder_fixtures):
    serve_and_compare_greedy(mesh, decoder_fixtures, GPU_CASES, ["--device=cuda"], seed=5, prompts_per_case=4,
                             label="cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: NCCL cannot put two ranks on one")
def test_two_cuda_ranks_serve_over_nccl_like_transformers(mesh, decoder_fixtures):
    serve_and_compare_greedy(mesh, decoder_fixtures, ["llama_gqa_tied", "gemma3_gqa"],
                             ["--device=cuda", "--tensor_parallel_size=2"], seed=6, prompts_per_case=4,
                             label="2 CUDA ranks")
