#!/usr/bin/env python3
"""Flotilla's fused CPU kernels against the eager LibTorch ops they replace, same process, same
inputs, same thread count; and the `paged` attention backend's builtin kernel (reads the KV blocks
in place) against its eager path (gather each sequence's context, then sdpa), decode at batch 32
with 1k-token contexts.

    python tools/bench/kernels_cpu.py [--threads 2] [--build-dir build]

Shapes: hidden 576 (SmolLM2-135M: intermediate 1536, 9/3 heads x 64) and 4096 (Llama-style: 11008,
32/8 x 128) over 1-256 tokens, float32 and bfloat16. Target (issue #13): >= 1.5x for the fused
kernels, >= 1.0x for paged decode. Build `kernels_bench` first. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-dir", type=Path, default=Path(os.environ.get("FLOTILLA_BUILD_DIR", REPOSITORY / "build")))
    args = parser.parse_args()
    binary = args.build_dir / "bin" / "kernels_bench"
    if not binary.exists():
        sys.exit(f"{binary} does not exist: cmake --build {args.build_dir} --target kernels_bench")
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run([str(binary), "--threads", str(args.threads)], capture_output=True, text=True,
                            env=environment, check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    print(f"threads: {args.threads}\n")
    print("| kernel | shape | eager LibTorch ops (us) | Flotilla kernel (us) | speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        speedup = row["eager_us"] / row["kernel_us"] if row["kernel_us"] > 0 else float("inf")
        print(f"| {row['kernel']} | {row['shape']} | {row['eager_us']:.1f} | {row['kernel_us']:.1f} | {speedup:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
