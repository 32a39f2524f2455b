"""Decoder sequence classification (`LlamaForSequenceClassification` and the models generated from
llama: Qwen2, Qwen3, Mistral, Phi-3): logits taken at each row's rightmost non-pad token, as
transformers' GenericForSequenceClassification computes them, on a ragged batch padded on either
side. Checkpoints are written by transformers with random weights in the test's own folder."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from .conftest import ids_text

TOLERANCE = 1e-4
PAD = 0
ROWS = [[5, 9, 17, 3, 44, 8, 21], [7, 30, 2], [11, 12, 13, 14, 15]]

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD,
            id2label={0: "negative", 1: "neutral", 2: "positive"})


def write_checkpoint(model_type: str, folder):
    import transformers

    extra = {"head_dim": 8} if model_type == "qwen3" else {}
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    return model


def padded(side: str):
    length = max(len(row) for row in ROWS)
    input_ids = torch.full((len(ROWS), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, row in enumerate(ROWS):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        input_ids[index, span] = torch.tensor(row)
        attention_mask[index, span] = 1
    return input_ids, attention_mask


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral", "phi3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_at_the_last_real_token_match_transformers(flotilla, tmp_path, model_type, side):
    model = write_checkpoint(model_type, tmp_path / "checkpoint")
    input_ids, attention_mask = padded(side)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    flotilla.run("forward", str(tmp_path / "checkpoint"), "--input-ids", ids_text(input_ids, attention_mask),
                 "--padding-side", side, "--attention", "eager", "--output", str(tmp_path / "out.safetensors"))
    logits = load_file(str(tmp_path / "out.safetensors"))["logits"]
    assert logits.shape == expected.shape == (len(ROWS), 3)
    assert (logits - expected).abs().max().item() <= TOLERANCE


def test_a_batch_without_a_pad_token_is_refused(flotilla, tmp_path):
    import json

    write_checkpoint("llama", tmp_path / "checkpoint")
    config_path = tmp_path / "checkpoint" / "config.json"
    config = json.loads(config_path.read_text())
    del config["pad_token_id"]
    config_path.write_text(json.dumps(config))
    result = flotilla.run("forward", str(tmp_path / "checkpoint"), "--input-ids", "1,2,3;4,5,6",
                          "--output", str(tmp_path / "out.safetensors"), check=False)
    assert result.returncode != 0
    assert "no pad_token_id" in result.stderr
