#!/usr/bin/env python3
"""Xet benchmark: a generated safetensors checkpoint (random float32 tensors of 16 MiB each)
uploaded and downloaded against one Flotilla registry by the real huggingface_hub, once through
hf_xet (the default environment) and once with HF_HUB_DISABLE_XET=1 (LFS upload, plain /resolve/
download); then the same checkpoint with one tensor changed uploaded through Xet by a client with
an empty HF_HOME (global dedup), reporting bytes sent, bytes stored and seconds. Every download is
compared byte for byte. Each step runs in a fresh interpreter with its own HF_HOME.

Prints a markdown table (step, seconds, MiB/s, x the HF_HUB_DISABLE_XET=1 path).

    python tools/bench/registry_xet.py --size-mib 1024

Needs build/bin/flotilla-registry (or --build-dir).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MIB = 1 << 20
TENSOR_MIB = 16


def start_registry(build_dir: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    ready = data_dir.parent / "registry.ready"
    process = subprocess.Popen([str(build_dir / "bin" / "flotilla-registry"), "--grpc_listen=127.0.0.1:0",
                                "--http_listen=127.0.0.1:0", f"--data_dir={data_dir}", f"--ready_file={ready}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("registry did not start")
        time.sleep(0.05)
    return process, "http://" + json.loads(ready.read_text())["http_address"]


def metric(url: str, name: str) -> float:
    body = urllib.request.urlopen(url + "/metrics").read().decode()
    match = re.search(rf'^{name}\{{api="xet"\}} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def stored_bytes(data_dir: Path) -> int:
    """Every copy on disk: blobs and xorbs (a file uploaded through Xet is kept only as xorbs)."""
    return sum(p.stat().st_size for folder in ("blobs", "xet/xorbs") for p in (data_dir / folder).rglob("*")
               if p.is_file())


def run_step(code: str, url: str, home: Path, xet: bool) -> float:
    environment = dict(os.environ, HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
                       HF_HUB_DISABLE_PROGRESS_BARS="1")
    environment.pop("HF_HUB_DISABLE_XET", None)
    if not xet:
        environment["HF_HUB_DISABLE_XET"] = "1"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True,
                            text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return seconds


def make_checkpoint(folder: Path, size_mib: int, changed_tensor: int | None, seed: int = 0) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        generator = torch.Generator().manual_seed({seed})
        count = max(1, {size_mib} // {TENSOR_MIB})
        tensors = {{f"model.layers.{{i}}.weight": torch.randn({TENSOR_MIB} * 1024 * 256, generator=generator)
                   for i in range(count)}}
        changed = {changed_tensor!r}
        if changed is not None:
            tensors[f"model.layers.{{changed}}.weight"] = torch.randn({TENSOR_MIB} * 1024 * 256)
        save_file(tensors, "{folder}/model.safetensors")
    """)], check=True)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds, each against a fresh registry (so nothing dedups across rounds); medians count")
    parser.add_argument("--build-dir", type=Path, default=Path(os.environ.get("FLOTILLA_BUILD_DIR", REPOSITORY / "build")))
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="registry_xet_") as temporary:
        root = Path(temporary)
        base, tuned, other = root / "base", root / "tuned", root / "other"
        base.mkdir()
        tuned.mkdir()
        other.mkdir()
        make_checkpoint(base, arguments.size_mib, None)
        # The LFS upload's checkpoint has other bytes, so the Xet upload stores all of its own.
        make_checkpoint(other, arguments.size_mib, None, seed=1)
        make_checkpoint(tuned, arguments.size_mib, changed_tensor=1)
        size = (base / "model.safetensors").stat().st_size

        def upload(repository: str, folder: Path) -> str:
            return f"""
                from huggingface_hub import HfApi
                api = HfApi()
                api.create_repo("{repository}", exist_ok=True)
                api.upload_folder(folder_path="{folder}", repo_id="{repository}")
            """

        def download(repository: str, expected: Path) -> str:
            return f"""
                from huggingface_hub import hf_hub_download
                path = hf_hub_download("{repository}", "model.safetensors")
                with open(path, "rb") as got, open("{expected}/model.safetensors", "rb") as want:
                    while True:
                        a, b = got.read(1 << 24), want.read(1 << 24)
                        assert a == b, "download differs"
                        if not a:
                            break
            """

        steps = ["http_upload", "xet_upload", "http_download", "xet_download", "http_download_of_xet", "reupload", "verify"]
        seconds = {step: [] for step in steps}
        loads = {step: [] for step in steps}
        sent_stored = {"xet_upload": [], "reupload": []}
        for round_index in range(arguments.runs):
            home = root / f"homes{round_index}"
            data = root / f"data{round_index}"
            registry, url = start_registry(arguments.build_dir, data)

            def step(name: str, code: str, xet: bool) -> None:
                seconds[name].append(run_step(code, url, home / name, xet=xet))
                loads[name].append(os.getloadavg()[0])

            try:
                step("http_upload", upload("bench/lfs", other), xet=False)
                sent_before, stored_before = metric(url, "flotilla_registry_bytes_received_total"), stored_bytes(data)
                step("xet_upload", upload("bench/xet", base), xet=True)
                sent_stored["xet_upload"].append((metric(url, "flotilla_registry_bytes_received_total") - sent_before,
                                                  stored_bytes(data) - stored_before))
                # Downloads rotate which goes first. The last reads the Xet-uploaded file over plain
                # /resolve/: reconstructed from its chunks (Note [One store, two views] in xet_store.h).
                order = [("http_download", "bench/lfs", other, False), ("xet_download", "bench/xet", base, True),
                         ("http_download_of_xet", "bench/xet", base, False)]
                order = order[round_index % 3:] + order[:round_index % 3]
                for name, repository, expected, xet in order:
                    step(name, download(repository, expected), xet=xet)
                sent_before, stored_before = metric(url, "flotilla_registry_bytes_received_total"), stored_bytes(data)
                step("reupload", upload("bench/xet", tuned), xet=True)
                sent_stored["reupload"].append((metric(url, "flotilla_registry_bytes_received_total") - sent_before,
                                                stored_bytes(data) - stored_before))
                step("verify", download("bench/xet", tuned), xet=True)
            finally:
                registry.terminate()
                registry.wait()
                shutil.rmtree(data, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)
        mib = size / MIB
        tensors = max(1, arguments.size_mib // TENSOR_MIB)
        print(f"\ncheckpoint: {mib:.0f} MiB safetensors, {tensors} tensors; {arguments.runs} rounds, each against a "
              f"fresh registry; every round's seconds (load average, 1 min):")
        for name in steps:
            print(f"  {name}: " + ", ".join(f"{value:.2f} s ({load:.1f})" for value, load in zip(seconds[name], loads[name])))
        best = {name: median(values) for name, values in seconds.items()}

        def bytes_note(name: str) -> str:
            sent = median([value for value, _ in sent_stored[name]])
            stored = median([value for _, value in sent_stored[name]])
            return f"sent {sent / MIB:.1f} MiB, stored {stored / MIB:.1f} MiB"

        rows = [
            ("upload, HF_HUB_DISABLE_XET=1 (LFS)", best["http_upload"], "", "reference"),
            ("upload through hf_xet", best["xet_upload"], bytes_note("xet_upload"),
             f"{best['http_upload'] / best['xet_upload']:.2f}x"),
            ("download, HF_HUB_DISABLE_XET=1 (/resolve/)", best["http_download"], "", "reference"),
            ("download through hf_xet", best["xet_download"], "", f"{best['http_download'] / best['xet_download']:.2f}x"),
            ("download of the hf_xet upload, HF_HUB_DISABLE_XET=1 (/resolve/ from its chunks)",
             best["http_download_of_xet"], "", f"{best['http_download'] / best['http_download_of_xet']:.2f}x"),
            (f"re-upload, 1 of {tensors} tensors ({TENSOR_MIB} MiB) changed, empty HF_HOME", best["reupload"],
             bytes_note("reupload"), f"{best['http_upload'] / best['reupload']:.2f}x"),
            ("download of the changed checkpoint through hf_xet", best["verify"], "",
             f"{best['http_download'] / best['verify']:.2f}x"),
        ]
        load = os.getloadavg()
        print(f"\nmedians of {arguments.runs} rounds; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
              f"{load[2]:.1f} (1/5/15 min) on {os.cpu_count()} CPUs\n")
        print("| step | seconds | MiB/s | bytes | x HF_HUB_DISABLE_XET=1 |")
        print("| --- | ---: | ---: | --- | --- |")
        for name, value, note, ratio in rows:
            print(f"| {name} | {value:.2f} | {mib / value:.0f} | {note} | {ratio} |")


if __name__ == "__main__":
    main()
