#!/usr/bin/env python3
"""Builds a kernel repository from a kernel source folder, ready for `flotilla push --kind kernel`.

    python3 tools/kernels/build_kernel.py kernels/examples/rmsnorm_c --output /tmp/rmsnorm_c
    flotilla push /tmp/rmsnorm_c acme/rmsnorm_c --kind kernel

The source folder holds C/C++ sources written against kernels/abi/flotilla_kernel_abi.h and a
build.json: {"name": "rmsnorm_c", "layers": ["RMSNorm", "SiluAndMul"], "sources": ["rmsnorm.c"]}.
The output is the repository the registry checks (services/registry/kernel_manifest.h):

    kernel.json                             name, and per variant: library, sha256, layers, abi_version
    build/torch2.9-cpu-x86_64/librmsnorm_c.so
    README.md                               copied from the source folder when it has one

This machine builds the CPU variant (torch<major.minor>-cpu-<architecture>, the name a worker
asks for). --variant names another one (what a cross-build would produce; the tests use it for a
wrong-platform repository). Only the ABI header is on the include path: a kernel that needs more
of Flotilla is not a hub kernel.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
ABI_DIRECTORY = REPOSITORY / "kernels" / "abi"
KNOWN_LAYERS = {"RMSNorm", "SiluAndMul", "RotaryEmbedding"}


def abi_version() -> int:
    header = (ABI_DIRECTORY / "flotilla_kernel_abi.h").read_text()
    return int(re.search(r"#define FLOTILLA_KERNEL_ABI_VERSION (\d+)u", header).group(1))


def cpu_variant() -> str:
    try:
        import torch  # the wheel the worker links: its version names the variant
        version = torch.__version__.split("+")[0]
    except ImportError:
        sys.exit("build_kernel: torch is not importable; pass --variant")
    major_minor = ".".join(version.split(".")[:2])
    return f"torch{major_minor}-cpu-{platform.machine()}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="kernel source folder with build.json")
    parser.add_argument("--output", type=Path, required=True, help="repository folder to write (replaced)")
    parser.add_argument("--variant", help="variant name (default: this machine's CPU variant)")
    parser.add_argument("--compiler", default="cc", help="C compiler (C++ sources use c++)")
    args = parser.parse_args()

    spec_path = args.source / "build.json"
    if not spec_path.exists():
        sys.exit(f"build_kernel: {spec_path} does not exist")
    spec = json.loads(spec_path.read_text())
    name = spec.get("name", "")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        sys.exit(f"build_kernel: build.json name must be letters, digits and _, got {name!r}")
    layers = spec.get("layers", [])
    unknown = [layer for layer in layers if layer not in KNOWN_LAYERS]
    if not layers or unknown:
        sys.exit(f"build_kernel: build.json layers must be a non-empty subset of {sorted(KNOWN_LAYERS)}, got {layers}")
    sources = [args.source / source for source in spec.get("sources", [])]
    missing = [str(source) for source in sources if not source.exists()]
    if not sources or missing:
        sys.exit(f"build_kernel: build.json sources missing or empty: {missing or 'none listed'}")

    variant = args.variant or cpu_variant()
    if args.output.exists():
        shutil.rmtree(args.output)
    library_name = f"lib{name}.so"
    variant_directory = args.output / "build" / variant
    variant_directory.mkdir(parents=True)
    library = variant_directory / library_name
    compiler = "c++" if any(source.suffix in (".cc", ".cpp") for source in sources) else args.compiler
    # -fvisibility=hidden: only what the source marks as exported (the ABI's symbols) is visible.
    command = [compiler, "-O3", "-shared", "-fPIC", "-fvisibility=hidden", f"-I{ABI_DIRECTORY}", "-o", str(library),
               *map(str, sources), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        sys.exit(f"build_kernel: compiling {variant} failed: {' '.join(command)}")

    manifest = {
        "name": name,
        "variants": {
            variant: {"library": library_name, "sha256": sha256_of(library), "layers": layers,
                      "abi_version": abi_version()},
        },
    }
    (args.output / "kernel.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if (args.source / "README.md").exists():
        shutil.copy(args.source / "README.md", args.output / "README.md")
    print(json.dumps({"repository": str(args.output), "variant": variant, "library": str(library)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
