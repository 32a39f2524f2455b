"""Parity of Flotilla's vision models (ViT, CLIP) with transformers on small random-weight
checkpoints (tests/fixtures/models/make_vision_fixtures.py): float32 hidden states, pooled outputs,
projections and logits within 1e-4 for eager and sdpa, bfloat16 within transformers' tolerance,
run through `flotilla forward --pixel-values`."""
from __future__ import annotations

import pytest
import torch

from .conftest import GENERATED, ids_text, run_script

TOLERANCE = 1e-4
CASES = ["vit_model", "vit_classifier", "clip_legacy_eos", "clip_eos_id", "clip_text", "clip_vision",
         "clip_text_projection", "clip_vision_projection"]


@pytest.fixture(scope="session")
def vision_fixtures():
    directory = GENERATED / "vision"
    run_script("make_vision_fixtures.py", str(directory))
    return directory


def load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def run_forward(flotilla, case_directory, output, reference, *extra):
    arguments = ["forward", str(case_directory), "--output", str(output), *extra]
    if "pixel_values" in reference:
        arguments += ["--pixel-values", str(case_directory / "inputs.safetensors")]
    if "input_ids" in reference:
        arguments += ["--input-ids", ids_text(reference["input_ids"], reference["attention_mask"]),
                      "--padding-side", "right"]
    flotilla.run(*arguments)
    return load(output)


def compared_keys(reference, prefix):
    """Expected output names (without the eager./sdpa. prefix) and the names the CLI writes."""
    pairs = []
    for key in reference:
        if not key.startswith(prefix + "."):
            continue
        name = key[len(prefix) + 1:]
        ours = "logits" if name == "logits_per_image" else name
        pairs.append((key, ours))
    return pairs


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_transformers(vision_fixtures, flotilla, tmp_path, case, implementation):
    reference = load(vision_fixtures / case / "expected.safetensors")
    ours = run_forward(flotilla, vision_fixtures / case, tmp_path / "out.safetensors", reference,
                       "--attention", implementation)
    pairs = compared_keys(reference, implementation)
    assert len(pairs) >= 4
    if "input_ids" in reference:
        assert torch.equal(ours["input_ids"], reference["input_ids"]), "the CLI pads ragged rows on the right"
    for key, name in pairs:
        assert name in ours, f"{case}: flotilla wrote no {name} (it wrote {sorted(ours)})"
        assert ours[name].shape == reference[key].shape, f"{case} {name}: {ours[name].shape} != {reference[key].shape}"
        difference = (ours[name] - reference[key]).abs().max().item()
        assert difference <= TOLERANCE, f"{case} {implementation}: {name} differs by {difference}"


def test_interpolated_position_embeddings(vision_fixtures, flotilla, tmp_path):
    case = vision_fixtures / "vit_model"
    reference = load(case / "expected.safetensors")
    flotilla.run("forward", str(case), "--pixel-values", str(case / "large_inputs.safetensors"),
                 "--interpolate-pos-encoding", "--output", str(tmp_path / "out.safetensors"))
    ours = load(tmp_path / "out.safetensors")
    assert ours["last_hidden_state"].shape == (1, 37, 64)
    for name in ("last_hidden_state", "pooler_output"):
        difference = (ours[name] - reference[f"interpolated.{name}"]).abs().max().item()
        assert difference <= TOLERANCE, f"interpolated {name} differs by {difference}"


def test_wrong_image_size_is_an_error(vision_fixtures, flotilla, tmp_path):
    case = vision_fixtures / "vit_model"
    result = flotilla.run("forward", str(case), "--pixel-values", str(case / "large_inputs.safetensors"),
                          "--output", str(tmp_path / "out.safetensors"), check=False)
    assert result.returncode != 0
    assert "Input image size (48*48) doesn't match model (32*32)" in result.stderr


@pytest.mark.parametrize("case", ["clip_legacy_eos", "clip_eos_id"])
def test_clip_towers_alone_give_the_joint_embeddings(vision_fixtures, flotilla, tmp_path, case):
    """CLIPModel with text only (get_text_features) or pixels only (get_image_features): the
    projected, unnormalised embeddings, whose normalised form is the joint forward's."""
    directory = vision_fixtures / case
    reference = load(directory / "expected.safetensors")
    flotilla.run("forward", str(directory), "--input-ids", ids_text(reference["input_ids"], reference["attention_mask"]),
                 "--padding-side", "right", "--output", str(tmp_path / "text.safetensors"))
    flotilla.run("forward", str(directory), "--pixel-values", str(directory / "inputs.safetensors"),
                 "--output", str(tmp_path / "image.safetensors"))
    text = load(tmp_path / "text.safetensors")["text_embeds"]
    image = load(tmp_path / "image.safetensors")["image_embeds"]
    assert "logits" not in load(tmp_path / "text.safetensors")
    for ours, key in ((text, "sdpa.text_embeds"), (image, "sdpa.image_embeds")):
        normalised = ours / ours.norm(dim=-1, keepdim=True)
        assert (normalised - reference[key]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("case", ["vit_classifier", "clip_legacy_eos", "clip_vision", "clip_text_projection"])
def test_bfloat16_within_transformers_tolerance(vision_fixtures, flotilla, tmp_path, case):
    reference = load(vision_fixtures / case / "expected.safetensors")
    ours = run_forward(flotilla, vision_fixtures / case, tmp_path / "bf16.safetensors", reference,
                       "--dtype", "bfloat16")
    pairs = compared_keys(reference, "bf16")
    assert pairs
    for key, name in pairs:
        assert ours[name].dtype == torch.bfloat16
        # transformers' own bf16 comparisons (tests/test_modeling_common.py) use atol=rtol=1e-2 or looser.
        torch.testing.assert_close(ours[name].float(), reference[key], atol=2e-2, rtol=2e-2, msg=f"{case} {name}")


def test_image_file_end_to_end_matches_transformers(vision_fixtures, flotilla, tmp_path):
    """`--image`: the PNG through services/preprocess/image with the folder's preprocessor_config.json
    (CLIPImageProcessor: bicubic resize, center crop, normalise), then CLIPModel, against
    transformers' AutoImageProcessor + CLIPModel."""
    directory = vision_fixtures / "clip_eos_id"
    reference = load(directory / "expected.safetensors")
    flotilla.run("forward", str(directory), "--image", str(directory / "image.png"),
                 "--input-ids", ids_text(reference["input_ids"], reference["attention_mask"]), "--padding-side", "right",
                 "--output", str(tmp_path / "out.safetensors"))
    ours = load(tmp_path / "out.safetensors")
    pixel_difference = (ours["pixel_values"] - reference["image.pixel_values"]).abs().max().item()
    assert pixel_difference <= 1e-4, f"pixel_values differ by {pixel_difference}"
    for name, key in (("logits", "image.logits_per_image"), ("image_embeds", "image.image_embeds")):
        difference = (ours[name] - reference[key]).abs().max().item()
        assert difference <= TOLERANCE, f"--image {name} differs by {difference}"
