"""Images/s for a batch of 32 JPEGs through the CLIP image processor: Flotilla (`flotilla
process-image --iterations`) vs transformers' fast (torchvision) and slow (PIL) processors, same
thread count, each decoding the files itself (transformers is given paths, Flotilla the file bytes
already read into memory; reading 32 small files from the page cache costs well under 1 ms).

    python tools/bench/image_clip.py [--threads N] [--iterations 20] [--size 640x480]

Prints one JSON line per contender and the speedups, then a table (processor, images/s, x slow, x
fast). Targets (issue #6): >= 1.5x the fast processor and >= 10x the slow one on CPU. The last row,
Flotilla's JPEG decoding alone on the same threads, is the ceiling any exact processor has here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "tests" / "fixtures" / "image"))


def write_jpegs(folder: Path, count: int, width: int, height: int) -> list[Path]:
    from PIL import Image

    import make_images

    paths = []
    for index in range(count):
        path = folder / f"photo_{index:02d}.jpg"
        Image.fromarray(make_images.picture(width, height, 100 + index)).save(path, quality=90)
        paths.append(path)
    return paths


def time_python(processor, paths: list[Path], iterations: int) -> float:
    arguments = [str(p) for p in paths]
    processor(arguments, return_tensors="pt")  # warm up
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        processor(arguments, return_tensors="pt")
        samples.append(time.perf_counter() - start)
    return len(paths) / statistics.median(samples)


def time_flotilla(model_dir: Path, paths: list[Path], iterations: int, threads: int, *extra: str) -> float:
    flotilla = Path(os.environ.get("FLOTILLA_BUILD_DIR", REPOSITORY / "build")) / "bin" / "flotilla"
    rates = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as scratch:
            result = subprocess.run([str(flotilla), "process-image", str(model_dir), *map(str, paths),
                                     "--output", f"{scratch}/out.safetensors", "--threads", str(threads),
                                     "--iterations", str(iterations), *extra],
                                    capture_output=True, text=True, check=True)
        rates.append(json.loads(result.stdout)["images_per_second"])
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--count", type=int, default=32)
    options = parser.parse_args()
    width, height = map(int, options.size.split("x"))

    import torch
    import transformers

    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = write_jpegs(folder, options.count, width, height)
        fast = transformers.CLIPImageProcessor()
        slow = transformers.CLIPImageProcessorPil()
        model_dir = folder / "clip"
        fast.save_pretrained(model_dir)
        results = {
            "flotilla": time_flotilla(model_dir, paths, options.iterations, options.threads),
            "transformers_fast": time_python(fast, paths, options.iterations),
            "transformers_slow": time_python(slow, paths, max(3, options.iterations // 4)),
            # Not a contender: Flotilla's exact JPEG decoding alone (libjpeg-turbo, the IDCT and
            # upsampling PIL uses, which 1e-5 parity needs), the ceiling on any exact processor here.
            "flotilla_decode_only": time_flotilla(model_dir, paths, options.iterations, options.threads,
                                                  "--decode-only"),
        }
    for name, rate in results.items():
        print(json.dumps({"contender": name, "images_per_second": round(rate, 1), "threads": options.threads,
                          "batch": options.count, "size": options.size}))
    print(json.dumps({"speedup_vs_fast": round(results["flotilla"] / results["transformers_fast"], 2),
                      "speedup_vs_slow": round(results["flotilla"] / results["transformers_slow"], 2)}))
    print(f"\n{options.count} JPEGs {options.size}, {options.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"{'processor':<20} {'images/s':>10} {'x slow':>8} {'x fast':>8}")
    for name, rate in results.items():
        print(f"{name:<20} {rate:>10.1f} {rate / results['transformers_slow']:>8.2f} "
              f"{rate / results['transformers_fast']:>8.2f}")


if __name__ == "__main__":
    main()
