"""Bare models (and CLIP's towers) loaded from fuller checkpoints, as `<Class>.from_pretrained(folder)`
does in transformers: `flotilla forward --architecture <Class>` on a CLIPModel, ViTForImageClassification,
BertForMaskedLM or RobertaForMaskedLM folder, compared with transformers loading the same folder
the same way (float32, within 1e-4). The tensors the class does not use are reported once, as a
warning; a pooler the head never had is left out (transformers would initialise it randomly)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .conftest import GENERATED, ids_text, run_script

TOLERANCE = 1e-4
UNUSED_WARNING = "checkpoint has tensors the model does not use"


@pytest.fixture(scope="session")
def vision_fixtures():
    directory = GENERATED / "vision"
    run_script("make_vision_fixtures.py", str(directory))
    return directory


def transformers_outputs(architecture, folder, **inputs):
    import transformers

    model = getattr(transformers, architecture).from_pretrained(folder, dtype=torch.float32,
                                                                attn_implementation="eager").eval()
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    result = {"last_hidden_state": output.last_hidden_state}
    for index, hidden in enumerate(output.hidden_states):
        result[f"hidden_states.{index}"] = hidden
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        if getattr(output, name, None) is not None:
            result[name] = getattr(output, name)
    return result


def check(ours, reference, valid=None, skip=()):
    compared = [name for name in reference if name not in skip]
    assert len(compared) >= 3
    for name in compared:
        assert name in ours, f"flotilla wrote no {name} (it wrote {sorted(ours)})"
        assert ours[name].shape == reference[name].shape, f"{name}: {ours[name].shape} != {reference[name].shape}"
        difference = (ours[name] - reference[name]).abs()
        if valid is not None and difference.dim() >= 2 and difference.shape[:2] == valid.shape:
            difference = difference[valid]
        assert difference.max().item() <= TOLERANCE, f"{name} differs by {difference.max().item()}"


def unused_warnings(stderr):
    return [json.loads(line) for line in stderr.splitlines() if UNUSED_WARNING in line]


@pytest.mark.parametrize("architecture", ["CLIPTextModel", "CLIPVisionModel", "CLIPTextModelWithProjection",
                                          "CLIPVisionModelWithProjection"])
def test_clip_tower_from_a_clip_model_checkpoint(vision_fixtures, flotilla, tmp_path, architecture):
    folder = vision_fixtures / "clip_eos_id"
    saved = load_file(str(folder / "expected.safetensors"))
    text = architecture.startswith("CLIPText")
    arguments = ["forward", str(folder), "--architecture", architecture, "--attention", "eager",
                 "--output", str(tmp_path / "out.safetensors")]
    if text:
        inputs = {"input_ids": saved["input_ids"], "attention_mask": saved["attention_mask"]}
        arguments += ["--input-ids", ids_text(saved["input_ids"], saved["attention_mask"]), "--padding-side", "right"]
    else:
        inputs = {"pixel_values": saved["pixel_values"]}
        arguments += ["--pixel-values", str(folder / "inputs.safetensors")]
    result = flotilla.run(*arguments)
    ours = load_file(str(tmp_path / "out.safetensors"))
    reference = transformers_outputs(architecture, folder, **inputs)
    check(ours, reference, valid=saved["attention_mask"].bool() if text else None)
    if architecture.endswith("WithProjection"):
        assert "pooler_output" not in ours  # CLIP{Text,Vision}ModelOutput has none
    # The other tower (and logit_scale, and the other projection) are reported once.
    warnings = unused_warnings(result.stderr)
    assert len(warnings) == 1, result.stderr
    unused = json.dumps(warnings[0])
    assert "logit_scale" in unused and ("vision_model." in unused) == text and ("text_model." in unused) != text


def test_vit_model_from_an_image_classification_checkpoint(vision_fixtures, flotilla, tmp_path):
    folder = vision_fixtures / "vit_classifier"
    saved = load_file(str(folder / "expected.safetensors"))
    result = flotilla.run("forward", str(folder), "--architecture", "ViTModel", "--pixel-values",
                          str(folder / "inputs.safetensors"), "--output", str(tmp_path / "out.safetensors"))
    ours = load_file(str(tmp_path / "out.safetensors"))
    reference = transformers_outputs("ViTModel", folder, pixel_values=saved["pixel_values"])
    # ViTForImageClassification has no pooler: transformers initialises ViTModel's randomly; Flotilla omits it.
    check(ours, reference, skip=("pooler_output",))
    assert "pooler_output" not in ours and "logits" not in ours
    warnings = unused_warnings(result.stderr)
    assert len(warnings) == 1 and "classifier.weight" in json.dumps(warnings[0])
    assert "without it" in result.stderr and '"pooler"' in result.stderr


@pytest.mark.parametrize("case, architecture", [("bert_mlm_tied", "BertModel"), ("bert_seq_cls", "BertModel"),
                                                ("roberta_mlm", "RobertaModel")])
def test_bare_encoder_from_a_head_checkpoint(flotilla, tmp_path, case, architecture):
    run_script("make_encoder_fixtures.py", str(GENERATED / "encoders"))
    folder = GENERATED / "encoders" / case
    saved = load_file(str(folder / "expected.safetensors"))
    mask = saved["attention_mask"]
    result = flotilla.run("forward", str(folder), "--architecture", architecture, "--padding-side", "right",
                          "--input-ids", ids_text(saved["input_ids"], mask),
                          "--token-type-ids", ids_text(saved["token_type_ids"], mask),
                          "--output", str(tmp_path / "out.safetensors"))
    ours = load_file(str(tmp_path / "out.safetensors"))
    reference = transformers_outputs(architecture, folder, input_ids=saved["input_ids"], attention_mask=mask,
                                     token_type_ids=saved["token_type_ids"])
    has_pooler = case.endswith("seq_cls")  # ForSequenceClassification keeps the pooler; ForMaskedLM has none
    check(ours, reference, valid=mask.bool(), skip=() if has_pooler else ("pooler_output",))
    assert ("pooler_output" in ours) == has_pooler and "logits" not in ours
    assert len(unused_warnings(result.stderr)) == 1


def test_architecture_of_another_model_type_is_an_error(vision_fixtures, flotilla, tmp_path):
    result = flotilla.run("forward", str(vision_fixtures / "vit_model"), "--architecture", "CLIPVisionModel",
                          "--pixel-values", str(vision_fixtures / "vit_model" / "inputs.safetensors"),
                          "--output", str(tmp_path / "out.safetensors"), check=False)
    assert result.returncode != 0
    assert 'architecture "CLIPVisionModel" is not registered for model_type vit (known: ViTModel' in result.stderr
