"""Parity of Flotilla's encoder models (bert, roberta: bare model, masked LM, sequence
classification) with transformers on small random-weight checkpoints
(tests/fixtures/models/make_encoder_fixtures.py), and of `flotilla embed` with sentence-transformers
on all-MiniLM-L6-v2: float32 outputs within 1e-4 for eager and sdpa, bfloat16 within transformers'
tolerance, sentence embeddings with cosine >= 0.99999."""
from __future__ import annotations

import json

import pytest
import torch

from .conftest import ids_text
from safetensors.torch import load_file

CASES = ["bert_model", "bert_mlm_tied", "bert_mlm_untied", "bert_seq_cls", "roberta_model", "roberta_mlm",
         "roberta_seq_cls"]
TOLERANCE = 1e-4


def expected(encoder_fixtures, case):
    return load_file(str(encoder_fixtures / case / "expected.safetensors"))


def compare(ours, reference, prefix, valid, label):
    """Max abs difference of every output transformers gave under `prefix`; per-token outputs on
    the valid (non-padding) positions only. Returns {name: difference}."""
    differences = {}
    names = [key[len(prefix) + 1:] for key in reference if key.startswith(prefix + ".")
             and not key[len(prefix) + 1:].startswith(("eager.", "sdpa."))]
    assert names, f"{label}: no reference outputs under {prefix}"
    for name in names:
        assert name in ours, f"{label}: flotilla forward wrote no {name} (wrote {sorted(ours)})"
        want = reference[f"{prefix}.{name}"]
        got = ours[name].float()
        assert got.shape == want.shape, f"{label}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        difference = (got - want).abs()
        if difference.dim() >= 2 and difference.shape[:2] == valid.shape:
            difference = difference[valid]
        differences[name] = difference.max().item()
    return differences


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_transformers(encoder_fixtures, flotilla, tmp_path, case, implementation):
    reference = expected(encoder_fixtures, case)
    mask = reference["attention_mask"]
    ours = flotilla.forward(encoder_fixtures / case, ids_text(reference["input_ids"], mask), tmp_path / "out.safetensors",
                            "--attention", implementation, "--padding-side", "right",
                            "--token-type-ids", ids_text(reference["token_type_ids"], mask))
    assert torch.equal(ours["attention_mask"], mask), "the CLI pads ragged rows on the right"
    assert torch.equal(ours["input_ids"], reference["input_ids"]), "padding uses the config's pad_token_id"
    differences = compare(ours, reference, implementation, mask.bool(), f"{case} {implementation}")
    assert max(differences.values()) <= TOLERANCE, f"{case} {implementation}: {differences}"
    layers = [key for key in reference if key.startswith(f"{implementation}.hidden_states.")]
    assert len(layers) == len([key for key in ours if key.startswith("hidden_states.")])

    # One row, no padding, no token_type_ids (they default to zeros, as transformers').
    single = flotilla.forward(encoder_fixtures / case, ids_text(reference["input_ids"][:1]),
                              tmp_path / "one.safetensors", "--attention", implementation)
    differences = compare(single, reference, f"single.{implementation}", torch.ones(1, mask.shape[1], dtype=torch.bool),
                          f"{case} {implementation} single")
    assert max(differences.values()) <= TOLERANCE, f"{case} {implementation} single: {differences}"


@pytest.mark.parametrize("case", ["bert_model", "bert_mlm_tied", "roberta_mlm", "roberta_seq_cls"])
def test_bfloat16_within_transformers_tolerance(encoder_fixtures, flotilla, tmp_path, case):
    reference = expected(encoder_fixtures, case)
    ours = flotilla.forward(encoder_fixtures / case, ids_text(reference["input_ids"][:1]), tmp_path / "bf16.safetensors",
                            "--dtype", "bfloat16")
    for key in reference:
        if not key.startswith("bf16."):
            continue
        name = key[len("bf16."):]
        assert ours[name].dtype == torch.bfloat16
        # transformers' own bf16 comparisons (tests/test_modeling_common.py) use atol=rtol=1e-2 or looser.
        torch.testing.assert_close(ours[name].float(), reference[key], atol=2e-2, rtol=2e-2, msg=f"{case} {name}")


def test_roberta_positions_ignore_padding_side(encoder_fixtures, flotilla, tmp_path):
    """Padding-aware position ids: a left-padded row gives its tokens the same outputs as unpadded."""
    reference = expected(encoder_fixtures, "roberta_model")
    ids = ids_text(reference["input_ids"][:2], reference["attention_mask"][:2])
    left = flotilla.forward(encoder_fixtures / "roberta_model", ids, tmp_path / "left.safetensors",
                            "--padding-side", "left")
    alone = flotilla.forward(encoder_fixtures / "roberta_model", ids.split(";")[1], tmp_path / "alone.safetensors")
    length = alone["last_hidden_state"].shape[1]
    difference = (left["last_hidden_state"][1, -length:] - alone["last_hidden_state"][0]).abs().max().item()
    assert difference <= TOLERANCE


def test_debug_json_records_encoder_modules(encoder_fixtures, flotilla, tmp_path):
    flotilla.forward(encoder_fixtures / "bert_mlm_tied", "5,6,7", tmp_path / "out.safetensors", "--debug-json",
                     str(tmp_path / "debug.json"))
    root = json.loads((tmp_path / "debug.json").read_text())[0]
    assert root["class"].endswith("BertForMaskedLM")
    model = root["children"][0]
    assert [child["module"] for child in model["children"]] == ["bert.embeddings", "bert.encoder"]
    assert root["children"][-1]["module"] == "cls.predictions"


SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog!",
    "Flotilla serves Hugging Face models from C++.",
    "Ünïcödé, punctuation... and 1234 numbers; naïve café résumé.",
    "short",
]


@pytest.fixture(scope="module")
def sentence_transformers_embeddings(minilm):
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(str(minilm), device="cpu")
    return model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False).float()


def test_embed_matches_sentence_transformers(minilm, flotilla, sentence_transformers_embeddings):
    arguments = ["embed", str(minilm)]
    for sentence in SENTENCES:
        arguments += ["--text", sentence]
    result = flotilla.run(*arguments)
    ours = torch.tensor(json.loads(result.stdout)["embeddings"])
    assert ours.shape == sentence_transformers_embeddings.shape
    cosine = torch.nn.functional.cosine_similarity(ours, sentence_transformers_embeddings, dim=-1)
    assert cosine.min().item() >= 0.99999, f"cosine {cosine.tolist()}"
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5), "embeddings are L2-normalised"


def test_forward_minilm_matches_transformers(minilm, flotilla, tmp_path):
    """Real weights through `flotilla forward` (ids from the Python tokenizer): last hidden state within 1e-4."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm))
    batch = tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")
    model = transformers.BertModel.from_pretrained(str(minilm), dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(**batch)
    mask = batch["attention_mask"]
    ours = flotilla.forward(minilm, ids_text(batch["input_ids"], mask), tmp_path / "minilm.safetensors",
                            "--padding-side", "right", "--token-type-ids", ids_text(batch["token_type_ids"], mask))
    valid = mask.bool()
    difference = (ours["last_hidden_state"] - reference.last_hidden_state).abs()[valid].max().item()
    assert difference <= TOLERANCE
    assert (ours["pooler_output"] - reference.pooler_output).abs().max().item() <= TOLERANCE


def test_bare_model_loads_a_head_checkpoint(encoder_fixtures, flotilla, tmp_path):
    """architectures ["BertForPreTraining"] (unregistered, as bert-base-uncased says) falls back to
    BertModel, which finds its weights under the head's "bert." prefix."""
    import shutil

    model = tmp_path / "pretraining"
    shutil.copytree(encoder_fixtures / "bert_seq_cls", model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["BertForPreTraining"]
    (model / "config.json").write_text(json.dumps(config))
    reference = expected(encoder_fixtures, "bert_seq_cls")
    ours = flotilla.forward(model, ids_text(reference["input_ids"][:1]), tmp_path / "out.safetensors")
    assert "logits" not in ours
    difference = (ours["last_hidden_state"] - reference["single.sdpa.hidden_states.2"]).abs().max().item()
    assert difference <= TOLERANCE
