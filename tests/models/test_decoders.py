"""Parity of Flotilla's decoder models with transformers on small random-weight checkpoints
(tests/fixtures/models/make_decoder_fixtures.py): float32 logits and hidden states within 1e-4
for eager and sdpa, greedy generation identical, bfloat16 within transformers' tolerance."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .conftest import ids_text

CASES = [
    "llama_gqa_tied", "llama_mha_untied", "llama_rope_linear", "llama_rope_dynamic", "llama_rope_llama3",
    "llama_rope_yarn", "llama_head_dim", "qwen2_gqa", "qwen2_sliding", "qwen3_qk_norm", "qwen3_bias_mha",
    "mistral_sliding", "mistral_no_window",
    "gpt2_tied", "gpt2_untied_scaled",
    "phi3_gqa_partial_rotary", "phi3_longrope_sliding",
    "gemma2_softcap_sliding", "gemma2_mha_untied", "gemma3_gqa", "gemma3_mha_linear_rope_softcap",
]
TOLERANCE = 1e-4


def expected(decoder_fixtures, case):
    return load_file(str(decoder_fixtures / case / "expected.safetensors"))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_transformers(decoder_fixtures, flotilla, tmp_path, case, implementation):
    reference = expected(decoder_fixtures, case)
    mask = reference["attention_mask"]
    config = json.loads((decoder_fixtures / case / "config.json").read_text())
    if implementation == "sdpa" and config.get("attn_logit_softcapping") is not None:
        # As transformers' sdpa_attention_forward: softcapping needs eager; the error says so.
        result = flotilla.run("forward", str(decoder_fixtures / case), "--input-ids", "5,6,7", "--output",
                              str(tmp_path / "out.safetensors"), "--attention", "sdpa", check=False)
        assert result.returncode != 0 and "softcap" in result.stderr, result.stderr
        return
    ours = flotilla.forward(decoder_fixtures / case, ids_text(reference["input_ids"], mask), tmp_path / "out.safetensors",
                            "--attention", implementation)
    # transformers offers no sdpa for Gemma 2; without softcapping the same math is compared with its eager outputs.
    if f"{implementation}.logits" not in reference:
        implementation = "eager"
    assert torch.equal(ours["attention_mask"], mask), "the CLI pads ragged rows on the left"
    valid = mask.bool()
    logits_difference = (ours["logits"] - reference[f"{implementation}.logits"]).abs()[valid].max().item()
    assert logits_difference <= TOLERANCE, f"{case} {implementation}: logits differ by {logits_difference}"
    layers = [key for key in reference if key.startswith(f"{implementation}.hidden_states.")]
    assert len(layers) == len([key for key in ours if key.startswith("hidden_states.")])
    for key in layers:
        index = key.rsplit(".", 1)[1]
        difference = (ours[f"hidden_states.{index}"] - reference[key]).abs()[valid].max().item()
        assert difference <= TOLERANCE, f"{case} {implementation}: hidden_states.{index} differ by {difference}"

    single = flotilla.forward(decoder_fixtures / case, ids_text(reference["input_ids"][:1]), tmp_path / "one.safetensors",
                              "--attention", implementation)
    difference = (single["logits"] - reference[f"{implementation}.single_logits"]).abs().max().item()
    assert difference <= TOLERANCE, f"{case} {implementation}: unpadded logits differ by {difference}"


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches_transformers(decoder_fixtures, flotilla, case):
    reference = expected(decoder_fixtures, case)
    # phi3_longrope_sliding crosses original_max_position_embeddings (16) mid-generation: as
    # transformers, flotilla drops the cache there and recomputes with longrope's long factors.
    ids = flotilla.generate(decoder_fixtures / case, ids_text(reference["prompt_ids"]), 32, "--ignore-eos")
    assert len(ids) == 32
    assert ids == reference["generated"][0].tolist()


@pytest.mark.parametrize("case", ["llama_gqa_tied", "llama_rope_dynamic", "qwen2_sliding", "mistral_sliding",
                                  "gpt2_tied", "phi3_gqa_partial_rotary", "gemma2_softcap_sliding", "gemma3_gqa"])
def test_left_padded_batch_generation_matches_transformers(decoder_fixtures, flotilla, case):
    reference = expected(decoder_fixtures, case)
    ids = flotilla.generate(decoder_fixtures / case, ids_text(reference["input_ids"], reference["attention_mask"]), 8,
                            "--ignore-eos")
    assert ids == reference["batch_generated"].tolist()


@pytest.mark.parametrize("case", ["llama_gqa_tied", "llama_mha_untied",
                                  "gpt2_untied_scaled", "phi3_longrope_sliding", "gemma2_mha_untied",
                                  "gemma3_mha_linear_rope_softcap"])
@pytest.mark.parametrize("kernels", ["eager", "builtin"])
def test_bfloat16_within_transformers_tolerance(decoder_fixtures, flotilla, tmp_path, case, kernels):
    # "builtin": the worker's default layers (the bfloat16 skinny products, fused norms, rotary).
    reference = expected(decoder_fixtures, case)
    mapping = ",".join(f"{layer}={kernels}" for layer in ("RMSNorm", "SiluAndMul", "RotaryEmbedding", "Linear"))
    ours = flotilla.forward(decoder_fixtures / case, ids_text(reference["input_ids"][:1]), tmp_path / "bf16.safetensors",
                            "--dtype", "bfloat16", "--kernels", mapping)
    assert ours["logits"].dtype == torch.bfloat16
    # transformers' own bf16 comparisons (tests/test_modeling_common.py) use atol=rtol=1e-2 or looser.
    torch.testing.assert_close(ours["logits"].float(), reference["bf16.logits"], atol=2e-2, rtol=2e-2)


def test_debug_json_records_every_submodule_in_order(decoder_fixtures, flotilla, tmp_path):
    case = decoder_fixtures / "llama_gqa_tied"
    flotilla.forward(case, "5,6,7", tmp_path / "out.safetensors", "--debug-json", str(tmp_path / "debug.json"))
    calls = json.loads((tmp_path / "debug.json").read_text())
    root = calls[0]
    assert root["class"].endswith("LlamaForCausalLM")
    model = root["children"][0]
    assert model["module"] == "model"
    names = [child["module"] for child in model["children"]]
    assert names[:3] == ["model.embed_tokens", "model.rotary_emb", "model.layers.0"]
    assert names[-1] == "model.norm"
    layer = model["children"][2]
    assert [child["module"] for child in layer["children"]] == [
        "model.layers.0.input_layernorm", "model.layers.0.self_attn", "model.layers.0.post_attention_layernorm",
        "model.layers.0.mlp"]
    summary = layer["outputs"]["output"]
    assert summary["shape"] == [1, 3, 64] and summary["dtype"] == "Float"
    assert {"mean", "std", "min", "max", "values"} <= set(summary)


def test_attention_switch_without_reload_matches(decoder_fixtures, flotilla, tmp_path):
    """The same weights through eager and sdpa agree (each backend against the eager reference)."""
    case = decoder_fixtures / "llama_gqa_tied"
    eager = flotilla.forward(case, "5,6,7,8;9,10", tmp_path / "e.safetensors", "--attention", "eager")
    sdpa = flotilla.forward(case, "5,6,7,8;9,10", tmp_path / "s.safetensors", "--attention", "sdpa")
    valid = eager["attention_mask"].bool()
    assert (eager["logits"] - sdpa["logits"]).abs()[valid].max().item() <= 1e-5


def test_gpt2_head_loads_a_bare_checkpoint(decoder_fixtures, flotilla, tmp_path):
    """The original gpt2 hub files store the base model without its "transformer." prefix (and carry
    the old attn.bias buffers); GPT2LMHeadModel loads them as transformers does, tying lm_head to wte."""
    import shutil

    from safetensors.torch import save_file

    case = decoder_fixtures / "gpt2_tied"
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(case / "config.json", bare / "config.json")
    weights = load_file(str(case / "model.safetensors"))
    renamed = {key.removeprefix("transformer."): value for key, value in weights.items() if key != "lm_head.weight"}
    renamed["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    save_file(renamed, str(bare / "model.safetensors"))
    reference = expected(decoder_fixtures, "gpt2_tied")
    ours = flotilla.forward(bare, ids_text(reference["input_ids"][:1]), tmp_path / "out.safetensors", "--attention", "eager")
    difference = (ours["logits"] - reference["eager.single_logits"]).abs().max().item()
    assert difference <= TOLERANCE
