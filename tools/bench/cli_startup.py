#!/usr/bin/env python3
"""Command-line start-up: wall time of a command that does almost nothing, best of N, for
`flotilla` (which links no LibTorch), `flotilla-torch` (the LibTorch commands `flotilla` execs, and
what every command paid before they were split), and the Hugging Face CLI (`hf`) as the reference
a user compares with.

    python tools/bench/cli_startup.py [--runs 20] [--build-dir build]

Prints a table (command, best ms, median ms, x hf).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def wall_times(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--build-dir", type=Path, default=REPOSITORY / "build")
    options = parser.parse_args()
    bin_dir = options.build_dir.resolve() / "bin"
    contenders = {
        "flotilla --help": [str(bin_dir / "flotilla"), "--help"],
        "flotilla forward --help (execs flotilla-torch)": [str(bin_dir / "flotilla"), "forward", "--help"],
        "flotilla-torch --help": [str(bin_dir / "flotilla-torch"), "--help"],
    }
    hf = shutil.which("hf")
    if hf:
        contenders["hf --help (huggingface_hub CLI)"] = [hf, "--help"]
    results = {name: wall_times(command, options.runs) for name, command in contenders.items()}
    reference = min(results["hf --help (huggingface_hub CLI)"]) if hf else None
    print(f"{options.runs} runs each, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'command':<48} {'best ms':>8} {'median ms':>10} {'x hf':>6}")
    for name, times in results.items():
        ratio = f"{reference / min(times):.1f}" if reference else "-"
        print(f"{name:<48} {1000 * min(times):>8.1f} {1000 * statistics.median(times):>10.1f} {ratio:>6}")


if __name__ == "__main__":
    main()
