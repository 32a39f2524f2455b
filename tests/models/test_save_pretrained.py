"""`flotilla save-pretrained` writes what transformers' save_pretrained writes: transformers loads the
folder back and computes the same logits, tied weights are stored once, and a bfloat16 save is
a bfloat16 checkpoint that transformers reads as such."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open


def transformers_logits(folder, input_ids, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return model(input_ids).logits.float()


@pytest.mark.parametrize("case", ["llama_gqa_tied", "qwen2_gqa"])
def test_saved_folder_loads_in_transformers_with_the_same_logits(decoder_fixtures, flotilla, tmp_path, case):
    source = decoder_fixtures / case
    output = tmp_path / "saved"
    flotilla.run("save-pretrained", str(source), str(output))
    input_ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    original = transformers_logits(source, input_ids)
    reloaded = transformers_logits(output, input_ids)
    assert torch.equal(original, reloaded)

    config = json.loads((output / "config.json").read_text())
    with safe_open(str(output / "model.safetensors"), "pt") as saved, safe_open(str(source / "model.safetensors"), "pt") as read:
        assert sorted(saved.keys()) == sorted(read.keys())
        if config.get("tie_word_embeddings"):
            assert "lm_head.weight" not in saved.keys(), "a tied weight is stored once, as transformers does"
        for key in read.keys():
            assert torch.equal(saved.get_tensor(key), read.get_tensor(key)), key


def test_bfloat16_save_is_a_bfloat16_checkpoint(decoder_fixtures, flotilla, tmp_path):
    source = decoder_fixtures / "llama_mha_untied"
    output = tmp_path / "bf16"
    flotilla.run("save-pretrained", str(source), str(output), "--dtype", "bfloat16")
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(output / "model.safetensors"), "pt") as saved, safe_open(str(source / "model.safetensors"), "pt") as read:
        for key in read.keys():
            assert saved.get_tensor(key).dtype == torch.bfloat16
            assert torch.equal(saved.get_tensor(key), read.get_tensor(key).to(torch.bfloat16)), key
    input_ids = torch.tensor([[2, 4, 6, 8]])
    ours = transformers_logits(output, input_ids, dtype=torch.bfloat16)
    theirs = transformers_logits(source, input_ids, dtype=torch.bfloat16)
    assert torch.equal(ours, theirs)


def test_saving_over_the_source_folder_is_refused(decoder_fixtures, flotilla):
    source = decoder_fixtures / "llama_gqa_tied"
    result = flotilla.run("save-pretrained", str(source), str(source), check=False)
    assert result.returncode == 2 and "its weights are still mapped" in result.stderr
