"""`flotilla process-image` against transformers' fast (torchvision) image processors.

The reference is what transformers computes for the same files and the same
preprocessor_config.json: `AutoImageProcessor.from_pretrained(dir)(paths, return_tensors="pt")`.
Given paths, transformers decodes with torchvision.io.decode_image (RGB mode, EXIF orientation);
tests here check (1) our decoded pixels equal torchvision's and Pillow's exactly, and (2) the
processors' pixel_values are within 1e-5 (max abs) with identical shapes, for ViT, CLIP, SigLIP and
Qwen2-VL. Fixtures come from tests/fixtures/image/make_images.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from conftest import REPOSITORY, binary

sys.path.insert(0, str(REPOSITORY / "tests" / "fixtures" / "image"))
import make_images  # noqa: E402

TOLERANCE = 1e-5
# transformers' path loader returns uint16 for 16-bit PNGs and then treats them as 0..255 values;
# we keep the high byte of each sample (as Pillow and libpng's strip_16 do). Compared separately.
SIXTEEN_BIT = {"png_rgb16.png"}
LARGE = {"jpeg_large_2048x1365.jpg"}


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    make_images.make(folder)
    return folder


def run_flotilla(model_dir: Path, paths: list[Path], output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary("flotilla")), "process-image", str(model_dir), *map(str, paths),
                           "--output", str(output), *extra], capture_output=True, text=True, timeout=300)


def processor_dir(tmp_path: Path, processor) -> Path:
    folder = tmp_path / "model"
    processor.save_pretrained(folder)
    return folder


def reference(model_dir: Path, paths: list[Path]):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir)
    assert processor.backend == "torchvision", processor
    return processor([str(p) for p in paths], return_tensors="pt")


def flotilla_outputs(model_dir: Path, paths: list[Path], tmp_path: Path) -> dict[str, torch.Tensor]:
    output = tmp_path / "pixel_values.safetensors"
    result = run_flotilla(model_dir, paths, output)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == str(output)
    return load_file(output)


def comparable(images: Path, skip=()) -> list[Path]:
    return sorted(p for p in images.iterdir() if p.name not in SIXTEEN_BIT | set(skip))


def test_decoded_pixels_equal_torchvision_and_pillow(images, tmp_path):
    from transformers import ViTImageProcessor
    from torchvision.io import ImageReadMode, decode_image

    # No resize, rescale or normalize: pixel_values are the decoded uint8 pictures, padded to one size.
    model_dir = processor_dir(tmp_path, ViTImageProcessor(do_resize=False, do_rescale=False,
                                                          do_normalize=False, do_pad=True))
    for batch in (sorted(p for p in images.iterdir() if p.name not in LARGE), sorted(images / n for n in LARGE)):
        ours = flotilla_outputs(model_dir, batch, tmp_path)["pixel_values"]
        assert ours.dtype == torch.uint8
        for index, path in enumerate(batch):
            pillow = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
            height, width, _ = pillow.shape
            decoded = ours[index, :, :height, :width].permute(1, 2, 0).numpy()
            assert np.array_equal(decoded, pillow), path.name
            if path.name not in SIXTEEN_BIT:
                torchvision = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
                assert torch.equal(ours[index, :, :height, :width], torchvision), path.name


def test_exif_orientations_give_the_upright_picture(images, tmp_path):
    from transformers import ViTImageProcessor

    model_dir = processor_dir(tmp_path, ViTImageProcessor(do_resize=False, do_rescale=False, do_normalize=False))
    paths = [images / f"exif_orientation_{o}.jpg" for o in range(1, 9)]
    ours = flotilla_outputs(model_dir, paths, tmp_path)["pixel_values"].int()
    assert ours.shape == (8, 3, 120, 200)
    # Each file re-encodes the picture (JPEG at q95, 4:4:4), so compare loosely to orientation 1.
    for index in range(1, 8):
        assert (ours[index] - ours[0]).abs().float().mean() < 2.0, f"orientation {index + 1}"


CASES = {
    "vit": ("ViTImageProcessor", {}),
    "vit_384_bicubic_no_normalize": ("ViTImageProcessor", {"size": {"height": 384, "width": 384}, "resample": 3,
                                                           "do_normalize": False}),
    "clip": ("CLIPImageProcessor", {}),
    "clip_336": ("CLIPImageProcessor", {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}),
    "clip_crop_larger_than_image": ("CLIPImageProcessor", {"size": {"shortest_edge": 64},
                                                           "crop_size": {"height": 96, "width": 80}}),
    "siglip": ("SiglipImageProcessor", {}),
    "siglip_384_bilinear": ("SiglipImageProcessor", {"size": {"height": 384, "width": 384}, "resample": 2}),
    "qwen2_vl": ("Qwen2VLImageProcessor", {}),
    "qwen2_vl_small": ("Qwen2VLImageProcessor", {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_values_match_transformers_fast(case, images, tmp_path):
    import transformers

    class_name, kwargs = CASES[case]
    processor = getattr(transformers, class_name)(**kwargs)
    model_dir = processor_dir(tmp_path, processor)
    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    config["an_unknown_key"] = {"ignored": True}  # unknown keys are ignored, as transformers does
    (model_dir / "preprocessor_config.json").write_text(json.dumps(config))

    skip = LARGE if case == "vit_384_bicubic_no_normalize" else ()
    paths = comparable(images, skip)
    expected = reference(model_dir, paths)
    ours = flotilla_outputs(model_dir, paths, tmp_path)
    assert set(ours) == set(expected.keys())
    for name, value in expected.items():
        assert ours[name].shape == value.shape, name
        assert ours[name].dtype == value.dtype, name
        difference = (ours[name].double() - value.double()).abs().max().item()
        assert difference <= TOLERANCE, f"{case} {name}: max abs difference {difference}"


def test_sixteen_bit_png_uses_the_high_byte(images, tmp_path):
    """transformers (path input) feeds uint16 samples to a processor that assumes 0..255; we reduce to 8
    bits first, so our pixel_values equal transformers' on the 8-bit picture Pillow decodes."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()
    model_dir = processor_dir(tmp_path, processor)
    path = images / "png_rgb16.png"
    eight_bit = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()
    expected = processor([eight_bit], return_tensors="pt")["pixel_values"]
    ours = flotilla_outputs(model_dir, [path], tmp_path)["pixel_values"]
    assert (ours - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name,data,message", [
    ("truncated.jpg", "truncate", "truncated"),
    ("empty.png", b"", "unrecognised image data"),
    ("text.jpg", b"not an image at all", "unrecognised image data"),
    ("animation.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "GIF is not supported"),
])
def test_bad_images_fail_with_a_precise_error(name, data, message, images, tmp_path):
    from transformers import CLIPImageProcessor

    model_dir = processor_dir(tmp_path, CLIPImageProcessor())
    path = tmp_path / name
    if data == "truncate":
        whole = (images / "jpeg_q95_420.jpg").read_bytes()
        data = whole[: len(whole) // 3]
    path.write_bytes(data)
    result = run_flotilla(model_dir, [images / "png_rgb.png", path], tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert "image 1" in result.stderr and message in result.stderr, result.stderr


def test_decompression_bomb_is_refused(images, tmp_path):
    from transformers import CLIPImageProcessor

    model_dir = processor_dir(tmp_path, CLIPImageProcessor())
    # A tiny PNG whose header declares 100000 x 100000 pixels (CRC fixed up so libpng reads it).
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    result = run_flotilla(model_dir, [path], tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert "100000x100000" in result.stderr and "exceeds the limit" in result.stderr, result.stderr


@pytest.mark.parametrize("decode_only", [False, True])
def test_benchmark_mode_times_the_batch_and_still_writes_pixel_values(decode_only, images, tmp_path):
    """`--iterations` (tools/bench/image_clip.py) reports images/s for the whole pipeline, or with
    `--decode-only` for the decoding alone; either way the output file is the normal result."""
    from transformers import CLIPImageProcessor

    model_dir = processor_dir(tmp_path, CLIPImageProcessor())
    paths = [images / "jpeg_q95_420.jpg", images / "png_rgb.png"]
    output = tmp_path / "out.safetensors"
    extra = ["--iterations", "2", "--threads", "2"] + (["--decode-only"] if decode_only else [])
    result = run_flotilla(model_dir, paths, output, *extra)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["timed"] == ("decode" if decode_only else "decode+process")
    assert summary["images_per_second"] > 0 and summary["threads"] == 2
    expected = reference(model_dir, paths)["pixel_values"]
    assert (load_file(output)["pixel_values"] - expected).abs().max().item() <= TOLERANCE

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])
    result = run_flotilla(model_dir, [paths[1], broken], output, *extra)
    assert result.returncode == 1 and "image 1" in result.stderr, result.stderr


def test_processor_config_json_is_read_when_there_is_no_preprocessor_config(images, tmp_path):
    """transformers 5's ProcessorMixin.save_pretrained (CLIPProcessor, ...) writes only
    processor_config.json, with the image processor nested under "image_processor"."""
    from transformers import CLIPImageProcessor

    model_dir = processor_dir(tmp_path, CLIPImageProcessor(size={"shortest_edge": 96}, crop_size=96))
    image_processor = json.loads((model_dir / "preprocessor_config.json").read_text())
    (model_dir / "preprocessor_config.json").unlink()
    (model_dir / "processor_config.json").write_text(json.dumps({"image_processor": image_processor,
                                                                 "processor_class": "CLIPProcessor"}))
    paths = [images / "jpeg_q95_420.jpg", images / "png_rgb.png"]
    expected = reference(model_dir, paths)["pixel_values"]
    pixel_values = flotilla_outputs(model_dir, paths, tmp_path)["pixel_values"]
    assert pixel_values.shape == expected.shape == (2, 3, 96, 96)
    assert (pixel_values - expected).abs().max().item() <= TOLERANCE

    (model_dir / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    result = run_flotilla(model_dir, paths, tmp_path / "out.safetensors")
    assert result.returncode == 1 and 'has no "image_processor" object' in result.stderr, result.stderr
    (model_dir / "processor_config.json").unlink()
    result = run_flotilla(model_dir, paths, tmp_path / "out.safetensors")
    assert result.returncode == 1
    assert "neither preprocessor_config.json nor processor_config.json" in result.stderr, result.stderr
