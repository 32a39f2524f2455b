#!/usr/bin/env python3
"""Flotilla's CUDA kernels against the eager LibTorch ops they replace, on one GPU, same process,
same inputs (`kernels_cuda_bench`, kernels/bench_cuda_main.cc): time per call with CUDA events after
warm-up, achieved bandwidth as a fraction of the device-to-device copy bandwidth measured in the same
run, and the largest error against the eager formula in float64; paged decode attention (batch 32,
1k context, scattered blocks) against sdpa on equal shapes and against gather + sdpa.

    python tools/bench/kernels_cuda.py [--build-dir build] [--quick]

Targets (issue #13): RMSNorm and SiLU-and-mul >= 80% of the copy bandwidth at hidden 4096 and 16k
tokens; paged decode >= sdpa. Needs a GPU and a CUDA build (`kernels_cuda_bench`);
tools/gpu/check.sh runs it and records the table in kernels/RESULTS.md. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=Path(os.environ.get("FLOTILLA_BUILD_DIR", REPOSITORY / "build")))
    parser.add_argument("--quick", action="store_true", help="smaller shapes: a smoke run, not the targets' shapes")
    args = parser.parse_args()
    binary = args.build_dir / "bin" / "kernels_cuda_bench"
    if not binary.exists():
        print(f"{binary} does not exist: it is built only where a CUDA toolkit is found", file=sys.stderr)
        return 2
    return subprocess.run([str(binary), *(["--quick"] if args.quick else [])]).returncode


if __name__ == "__main__":
    sys.exit(main())
