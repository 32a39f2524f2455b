"""`flotilla process-image --device cuda` (the image pipeline's LibTorch ops on a GPU) against
transformers' fast processors on the same GPU and against our own CPU path. Runs where torch sees a
GPU (tools/gpu/check.sh); skipped elsewhere.

- pixel values within 1e-5 (max abs) of transformers' fast processor given `device="cuda"`;
- against our CPU path: CPU resizes stay in uint8 where torchvision keeps uint8, CUDA resizes in
  float32 (services/preprocess/image/README.md), so the two paths may differ by a rounding of one
  uint8 level — exactly as transformers' own CPU and CUDA outputs do. The test bounds ours by
  theirs: |ours_cuda - ours_cpu| <= |theirs_cuda - theirs_cpu| + 2e-5 (both pairs are within 1e-5);
- images/s of both on the GPU, printed as markdown rows (check.sh collects them), never asserted;
- without a visible GPU, `--device cuda` is refused with the reason and writes nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_image_processors import CASES, LARGE, TOLERANCE, comparable, images, processor_dir, run_flotilla  # noqa: F401

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a GPU (run by tools/gpu/check.sh where one is lent)")


def ours(model_dir: Path, paths: list[Path], output: Path, device: str, *extra: str) -> tuple[dict, dict]:
    result = run_flotilla(model_dir, paths, output, "--device", device, *extra)
    assert result.returncode == 0, result.stderr
    return load_file(output), json.loads(result.stdout)


def theirs(model_dir: Path, paths: list[Path], device: str):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir)
    assert processor.backend == "torchvision", processor
    return {name: value.cpu() for name, value in processor([str(p) for p in paths], return_tensors="pt",
                                                          device=device).items()}


def max_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    return (first.double() - second.double()).abs().max().item()


@needs_gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_pixel_values_match_transformers_on_the_gpu_and_our_cpu_path(case, images, tmp_path):
    import transformers

    class_name, kwargs = CASES[case]
    model_dir = processor_dir(tmp_path, getattr(transformers, class_name)(**kwargs))
    paths = comparable(images, LARGE if case == "vit_384_bicubic_no_normalize" else ())
    ours_cuda, _ = ours(model_dir, paths, tmp_path / "cuda.safetensors", "cuda")
    ours_cpu, _ = ours(model_dir, paths, tmp_path / "cpu.safetensors", "cpu")
    theirs_cuda = theirs(model_dir, paths, "cuda")
    theirs_cpu = theirs(model_dir, paths, "cpu")
    assert set(ours_cuda) == set(theirs_cuda.keys())
    for name, value in theirs_cuda.items():
        assert ours_cuda[name].shape == value.shape, name
        assert ours_cuda[name].dtype == value.dtype, name
        difference = max_difference(ours_cuda[name], value)
        assert difference <= TOLERANCE, f"{case} {name}: max abs difference to transformers on CUDA {difference}"
        ours_gap = max_difference(ours_cuda[name], ours_cpu[name])
        theirs_gap = max_difference(value, theirs_cpu[name])
        assert ours_gap <= theirs_gap + 2 * TOLERANCE, (
            f"{case} {name}: our CUDA and CPU paths differ by {ours_gap}, transformers' by {theirs_gap}")


@needs_gpu
@pytest.mark.parametrize("case", ["clip", "siglip", "qwen2_vl"])
def test_cuda_images_per_second(case, images, tmp_path):
    """Timing only (printed for check.sh's RESULTS.md): the whole batch, decode included, on the GPU."""
    import transformers

    class_name, kwargs = CASES[case]
    model_dir = processor_dir(tmp_path, getattr(transformers, class_name)(**kwargs))
    paths = comparable(images, LARGE)
    iterations = 20
    _, summary = ours(model_dir, paths, tmp_path / "cuda.safetensors", "cuda", "--iterations", str(iterations))
    ours_rate = summary["images_per_second"]

    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir)
    files = [str(p) for p in paths]
    processor(files, return_tensors="pt", device="cuda")  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        output = processor(files, return_tensors="pt", device="cuda")
    output["pixel_values"].cpu()
    torch.cuda.synchronize()
    theirs_rate = len(files) * iterations / (time.perf_counter() - start)
    print(f"\n| image processor {case} on {torch.cuda.get_device_name()} | {len(files)} images | "
          f"{ours_rate:.0f} | {theirs_rate:.0f} | {ours_rate / theirs_rate:.2f}x |")
    assert ours_rate > 0 and theirs_rate > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the CUDA tests above run instead")
def test_cuda_without_a_visible_gpu_is_refused_with_the_reason(images, tmp_path):
    from transformers import CLIPImageProcessor

    model_dir = processor_dir(tmp_path, CLIPImageProcessor())
    output = tmp_path / "out.safetensors"
    result = run_flotilla(model_dir, [images / "png_rgb.png"], output, "--device", "cuda")
    assert result.returncode == 1
    assert "--device cuda" in result.stderr and "no CUDA device is visible" in result.stderr, result.stderr
    assert not output.exists()
