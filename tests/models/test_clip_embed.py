"""`flotilla embed` on CLIP checkpoints against transformers 5.23 on the same folders
(tests/fixtures/models/make_clip_embed_fixtures.py: a CLIPModel with its CLIPTokenizer and
CLIPImageProcessor, the two towers with projections, and a ViTModel):

- texts: CLIPModel.get_text_features(**tokenizer(texts, padding=True)) (a ragged batch, padded as
  the tokenizer pads; every row equal to the row embedded alone), CLIPTextModelWithProjection's text_embeds;
- images: get_image_features(pixel_values=processor(images=...)), CLIPVisionModelWithProjection's image_embeds;
- both: CLIPModel(...)'s text_embeds, image_embeds, logits_per_text, logits_per_image;
- --normalize, and the errors a user meets (wrong modality, no embeddings, a missing image file).

float32 within 1e-5."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from .conftest import GENERATED, run_script

TOLERANCE = 1e-5
TEXTS = ["a photo of a cat", "Two CATS sleeping on a red sofa, at night!", "dog", "Ünïcödé café 42"]
IMAGES = ["image.png", "photo.jpg", "wide.png"]


@pytest.fixture(scope="session")
def clip_fixtures():
    directory = GENERATED / "clip_embed"
    run_script("make_clip_embed_fixtures.py", str(directory))
    return directory


@pytest.fixture(scope="module")
def transformers_clip(clip_fixtures):
    """transformers' CLIPModel, CLIPProcessor and the image files' PIL pictures for the clip folder."""
    import transformers
    from PIL import Image

    torch.set_num_threads(2)
    folder = clip_fixtures / "clip"
    model = transformers.CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.CLIPProcessor.from_pretrained(folder)
    pictures = [Image.open(folder / name) for name in IMAGES]
    return model, processor, pictures


def embed(flotilla, folder, *arguments, check=True):
    result = flotilla.run("embed", str(folder), *arguments, check=check)
    return json.loads(result.stdout) if check else result


def text_arguments(texts):
    return [argument for text in texts for argument in ("--text", text)]


def image_arguments(folder, names=IMAGES):
    return [argument for name in names for argument in ("--image", str(folder / name))]


def assert_close(ours, reference, name):
    ours = torch.tensor(ours)
    assert ours.shape == reference.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    difference = (ours - reference).abs().max().item()
    assert difference <= TOLERANCE, f"{name} differs by {difference}"


def test_fixture_is_a_ragged_right_padded_batch(clip_fixtures, transformers_clip):
    """What the comparisons below rely on: the texts tokenize to different lengths, CLIP's tokenizer
    pads them on the right with <|endoftext|> (not config.json's pad_token_id), and the folder keeps
    its image processor in processor_config.json, as transformers 5's CLIPProcessor writes it."""
    _, processor, _ = transformers_clip
    tokenizer = processor.tokenizer
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) == len(TEXTS), lengths
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>") == tokenizer.eos_token_id
    assert batch["input_ids"][2, -1].item() == tokenizer.pad_token_id
    assert not (clip_fixtures / "clip" / "preprocessor_config.json").exists()
    assert (clip_fixtures / "clip_vision_projection" / "preprocessor_config.json").exists()


def test_text_embeddings_match_get_text_features(clip_fixtures, flotilla, transformers_clip):
    model, processor, _ = transformers_clip
    with torch.no_grad():
        reference = model.get_text_features(**processor.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    ours = embed(flotilla, clip_fixtures / "clip", *text_arguments(TEXTS))
    assert list(ours) == ["embeddings"]
    assert_close(ours["embeddings"], reference.pooler_output, "text embeddings")


def test_each_text_row_equals_the_text_alone(clip_fixtures, flotilla, transformers_clip):
    model, processor, _ = transformers_clip
    batch = torch.tensor(embed(flotilla, clip_fixtures / "clip", *text_arguments(TEXTS))["embeddings"])
    for index, text in enumerate(TEXTS):
        alone = torch.tensor(embed(flotilla, clip_fixtures / "clip", "--text", text)["embeddings"])
        with torch.no_grad():
            reference = model.get_text_features(**processor.tokenizer([text], return_tensors="pt")).pooler_output
        assert (alone - reference).abs().max().item() <= TOLERANCE, text
        assert (batch[index] - alone[0]).abs().max().item() <= TOLERANCE, f"row {index} padded != alone"


def test_text_projection_checkpoint_gives_text_embeds(clip_fixtures, flotilla):
    """A CLIPTextModelWithProjection folder (eos_token_id = <|endoftext|>'s id: pooling at the first EOS)."""
    import transformers

    folder = clip_fixtures / "clip_text_projection"
    model = transformers.CLIPTextModelWithProjection.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        reference = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).text_embeds
    assert_close(embed(flotilla, folder, *text_arguments(TEXTS))["embeddings"], reference, "text_embeds")


def test_text_tower_chosen_from_a_clip_folder(clip_fixtures, flotilla, transformers_clip):
    """--architecture CLIPTextModelWithProjection on the CLIPModel folder, as
    CLIPTextModelWithProjection.from_pretrained(clip_folder): the same features as CLIPModel's."""
    model, processor, _ = transformers_clip
    with torch.no_grad():
        reference = model.get_text_features(**processor.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    ours = embed(flotilla, clip_fixtures / "clip", "--architecture", "CLIPTextModelWithProjection",
                 *text_arguments(TEXTS))
    assert_close(ours["embeddings"], reference.pooler_output, "text_embeds of the tower")


def test_image_embeddings_match_get_image_features(clip_fixtures, flotilla, transformers_clip):
    model, processor, pictures = transformers_clip
    pixel_values = processor(images=pictures, return_tensors="pt").pixel_values
    with torch.no_grad():
        reference = model.get_image_features(pixel_values=pixel_values).pooler_output
    ours = embed(flotilla, clip_fixtures / "clip", *image_arguments(clip_fixtures / "clip"))
    assert list(ours) == ["embeddings"]
    assert_close(ours["embeddings"], reference, "image embeddings")


def test_vision_projection_checkpoint_gives_image_embeds(clip_fixtures, flotilla, transformers_clip):
    """A CLIPVisionModelWithProjection folder with preprocessor_config.json (the Hub's layout)."""
    import transformers

    _, _, pictures = transformers_clip
    folder = clip_fixtures / "clip_vision_projection"
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        reference = model(pixel_values=processor(images=pictures, return_tensors="pt").pixel_values).image_embeds
    ours = embed(flotilla, folder, *image_arguments(clip_fixtures / "clip"))
    assert_close(ours["embeddings"], reference, "image_embeds")


def test_texts_and_images_give_clip_outputs(clip_fixtures, flotilla, transformers_clip):
    """Zero-shot classification: CLIPModel(**processor(text=..., images=..., padding=True))."""
    model, processor, pictures = transformers_clip
    inputs = processor(text=TEXTS, images=pictures, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs)
    folder = clip_fixtures / "clip"
    ours = embed(flotilla, folder, *text_arguments(TEXTS), *image_arguments(folder))
    assert sorted(ours) == ["image_embeds", "logits_per_image", "logits_per_text", "text_embeds"]
    for name in ("text_embeds", "image_embeds", "logits_per_text", "logits_per_image"):
        assert_close(ours[name], getattr(reference, name), name)
    assert torch.equal(torch.tensor(ours["logits_per_image"]).argmax(-1), reference.logits_per_image.argmax(-1))


def test_normalize(clip_fixtures, flotilla, transformers_clip):
    model, processor, pictures = transformers_clip
    folder = clip_fixtures / "clip"
    with torch.no_grad():
        text = model.get_text_features(**processor.tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
        image = model.get_image_features(
            pixel_values=processor(images=pictures, return_tensors="pt").pixel_values).pooler_output
    for arguments, reference in ((text_arguments(TEXTS), text), (image_arguments(folder), image)):
        raw = torch.tensor(embed(flotilla, folder, *arguments)["embeddings"])
        assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(raw)), atol=1e-3), "features are unnormalised"
        ours = embed(flotilla, folder, "--normalize", *arguments)["embeddings"]
        assert_close(ours, torch.nn.functional.normalize(reference, dim=-1), "normalised embeddings")
        assert torch.allclose(torch.tensor(ours).norm(dim=-1), torch.ones(len(raw)), atol=1e-6)
    # Together, the embeddings are already normalised and the logits do not change.
    both = embed(flotilla, folder, "--normalize", *text_arguments(TEXTS[:2]), *image_arguments(folder, IMAGES[:1]))
    plain = embed(flotilla, folder, *text_arguments(TEXTS[:2]), *image_arguments(folder, IMAGES[:1]))
    for name in both:
        assert_close(both[name], torch.tensor(plain[name]), f"--normalize {name}")


def test_normalize_on_a_sentence_transformers_folder(minilm, flotilla):
    """all-MiniLM-L6-v2 ends in a Normalize module already: --normalize changes nothing."""
    plain = embed(flotilla, minilm, "--text", "A man is eating food.", "--text", "short")["embeddings"]
    normalised = embed(flotilla, minilm, "--normalize", "--text", "A man is eating food.", "--text", "short")
    assert_close(normalised["embeddings"], torch.tensor(plain), "--normalize on minilm")


def assert_fails(result, *fragments, exit_code=2):
    assert result.returncode == exit_code, f"exit {result.returncode}: {result.stderr}"
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


def test_image_on_a_text_only_tower_is_an_error(clip_fixtures, flotilla):
    folder = clip_fixtures / "clip_text_projection"
    result = embed(flotilla, folder, "--text", "a cat", *image_arguments(clip_fixtures / "clip", IMAGES[:1]),
                   check=False)
    assert_fails(result, str(folder), "CLIPTextModelWithProjection", "text-only", "pass --text",
                 "CLIPVisionModelWithProjection")


def test_text_on_a_vision_only_tower_is_an_error(clip_fixtures, flotilla):
    folder = clip_fixtures / "clip_vision_projection"
    assert_fails(embed(flotilla, folder, "--text", "a cat", check=False), str(folder), "CLIPVisionModelWithProjection",
                 "vision-only", "pass --image")
    # A tower chosen from a full folder says so, and how to get the full model back.
    result = embed(flotilla, clip_fixtures / "clip", "--architecture", "CLIPVisionModelWithProjection",
                   "--text", "a cat", check=False)
    assert_fails(result, "CLIPVisionModelWithProjection", "vision-only", "--architecture")


def test_model_without_embeddings_is_an_error(clip_fixtures, flotilla):
    folder = clip_fixtures / "vit"
    assert_fails(embed(flotilla, folder, "--text", "a cat", check=False), str(folder), "ViTModel",
                 "neither sentence-transformers pooling", "nor CLIP embeddings", "flotilla forward")
    result = embed(flotilla, folder, *image_arguments(clip_fixtures / "clip", IMAGES[:1]), check=False)
    assert_fails(result, str(folder), "ViTModel", "no image embeddings", "flotilla forward --image")
    # The bare CLIP vision tower (no projection) has no embeddings either.
    result = embed(flotilla, clip_fixtures / "clip", "--architecture", "CLIPVisionModel",
                   *image_arguments(clip_fixtures / "clip", IMAGES[:1]), check=False)
    assert_fails(result, "CLIPVisionModel", "no image embeddings", "CLIPVisionModelWithProjection")


def test_missing_image_file_is_an_error(clip_fixtures, flotilla, tmp_path):
    missing = tmp_path / "nowhere.jpg"
    result = embed(flotilla, clip_fixtures / "clip", "--image", str(missing), check=False)
    assert_fails(result, f'--image: cannot read "{missing}": no such file')


def test_clip_text_without_a_tokenizer_is_an_error(clip_fixtures, flotilla, tmp_path):
    folder = tmp_path / "clip_without_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_fixtures / "clip" / name, folder / name)
    assert_fails(embed(flotilla, folder, "--text", "a cat", check=False), str(folder), "CLIPModel",
                 "no tokenizer.json", exit_code=1)


def test_embed_needs_text_or_image(clip_fixtures, flotilla):
    assert_fails(embed(flotilla, clip_fixtures / "clip", check=False), "give --text, --image or both")
