#!/usr/bin/env python3
"""Registry hash throughput on one core: sha256 (OpenSSL; every push and pull verifies it),
BLAKE3 keyed (the Xet hashes) portable vs AVX2 vs AVX-512 (Notes [BLAKE3 with AVX2] and [BLAKE3
with AVX-512] in services/registry/blake3.cc), and the Xet chunker + chunk hashes with each BLAKE3
path. Every
round runs each contender once on the same bytes, in turn; the table shows medians and the load
average beside them.

    python tools/bench/registry_hash.py --mib 256 --rounds 7

Needs build/bin/registry_hash_bench (or --build-dir).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--build-dir", type=Path, default=Path(os.environ.get("FLOTILLA_BUILD_DIR", REPOSITORY / "build")))
    arguments = parser.parse_args()
    load_before = os.getloadavg()[0]
    output = subprocess.run([str(arguments.build_dir / "bin" / "registry_hash_bench"), "--mib", str(arguments.mib),
                             "--rounds", str(arguments.rounds)], capture_output=True, text=True, check=True).stdout
    load_after = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {}
    for line in output.splitlines():
        record = json.loads(line)
        seconds.setdefault(record["name"], []).append(record["seconds"])
    rates = {name: arguments.mib / statistics.median(values) for name, values in seconds.items()}
    print(f"{arguments.mib} MiB, {arguments.rounds} rounds; load average (1 min) {load_before:.1f} before, "
          f"{load_after:.1f} after, on {os.cpu_count()} CPUs\n")
    print("| hash, one core | MiB/s (median) | rounds MiB/s | × portable |\n| --- | ---: | --- | ---: |")
    for name, rate in rates.items():
        simd = next((level for level in ("AVX-512", "AVX2") if level in name), None)
        portable = rates.get(name.replace(simd, "portable")) if simd else None
        ratio = f"{rate / portable:.2f}×" if portable else ""
        every = ", ".join(f"{arguments.mib / value:.0f}" for value in seconds[name])
        print(f"| {name} | {rate:.0f} | {every} | {ratio} |")


if __name__ == "__main__":
    main()
