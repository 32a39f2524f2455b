"""Rotary frequencies for every rope variant match transformers' own rotary embedding
(LlamaRotaryEmbedding, which calls ROPE_INIT_FUNCTIONS and dynamic_rope_update)."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import binary

VARIANTS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    "yarn_mscale": {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                    "beta_fast": 16.0, "beta_slow": 2.0, "original_max_position_embeddings": 32, "rope_theta": 20000.0},
    # 24 positions use the short factors, 80 the long ones.
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0,
                 "short_factor": [1.0 + 0.1 * i for i in range(16)], "long_factor": [1.0 + 0.75 * i for i in range(16)]},
}


@pytest.mark.parametrize("positions", [24, 80])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rotary_matches_transformers(tmp_path, variant, positions):
    import transformers
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = transformers.LlamaConfig(hidden_size=128, num_attention_heads=4, max_position_embeddings=32,
                                      rope_parameters=dict(VARIANTS[variant]))
    config_path = tmp_path / "config.json"
    config.save_pretrained(tmp_path)
    output = tmp_path / "rope.safetensors"
    subprocess.run([str(binary("models_rope_dump")), str(config_path), str(positions), str(output)], check=True)
    ours = load_file(str(output))

    rotary = LlamaRotaryEmbedding(config)
    x = torch.zeros(1, dtype=torch.float32)
    cos, sin = rotary(x, torch.arange(positions)[None])
    assert torch.equal(ours["inv_freq"], rotary.inv_freq), f"{variant}: inv_freq differs"
    assert ours["attention_scaling"].item() == pytest.approx(rotary.attention_scaling, rel=1e-12)
    torch.testing.assert_close(ours["cos"], cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["sin"], sin, atol=1e-6, rtol=0)
