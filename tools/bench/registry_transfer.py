#!/usr/bin/env python3
"""Registry transfer benchmark: push and pull of one large generated file over loopback next to
`cp` of the same file on the same disk, and huggingface_hub's snapshot_download of a many-file repo
next to the same files fetched from `python -m http.server` with the same parallelism. Prints a
table (MB/s, ratio to the baseline, registry peak RSS).

    python tools/bench/registry_transfer.py --size-mib 2048 --snapshot-files 20 --snapshot-mib 1024

Needs build/bin/flotilla-registry and build/bin/flotilla (or --build-dir).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def write_random_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as file:
        written = 0
        while written < size:
            # Rotate the block so no two 16 MiB blocks are equal (nothing compresses or dedups).
            shift = (written // len(block)) % len(block)
            chunk = (block[shift:] + block[:shift])[: size - written]
            file.write(chunk)
            written += len(chunk)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


class PeakRss:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def best_of(runs: int, function) -> float:
    """The fastest of `runs` runs (the least disturbed by other processes on a shared machine)."""
    return min(timed(function)[0] for _ in range(runs))


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def start_registry(build: Path, work: Path) -> tuple[subprocess.Popen, dict]:
    ready = work / "registry.ready"
    process = subprocess.Popen([str(build / "bin" / "flotilla-registry"), "--grpc_listen=127.0.0.1:0",
                                "--http_listen=127.0.0.1:0", f"--data_dir={work / 'registry-data'}",
                                f"--ready_file={ready}", "--log_level=warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready.exists():
        if process.poll() is not None:
            sys.exit("flotilla-registry exited at start")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())


def cli(build: Path, *args: str) -> dict:
    result = subprocess.run([str(build / "bin" / "flotilla"), *args, "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"flotilla {' '.join(args)} failed: {result.stderr}")
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch_all(base_url: str, names: list[str], target: Path, workers: int = 8) -> None:
    def fetch(name: str) -> None:
        with urllib.request.urlopen(f"{base_url}/{name}") as response, open(target / name, "wb") as file:
            while chunk := response.read(10 * MIB):
                file.write(chunk)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the single large file")
    parser.add_argument("--snapshot-files", type=int, default=20)
    parser.add_argument("--snapshot-mib", type=int, default=1024, help="total size of the snapshot repo")
    parser.add_argument("--build-dir", type=Path, default=REPOSITORY / "build")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    arguments = parser.parse_args()
    build = arguments.build_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="registry_bench_", dir=arguments.work_dir))
    rows = []
    registry_cpu = 0.0
    try:
        size = arguments.size_mib * MIB
        source = work / "source"
        source.mkdir()
        big = source / "model.safetensors"
        write_random_file(big, size)
        registry, ready = start_registry(build, work)
        try:
            # Warm the page cache for everyone alike: each contender reads the file from memory.
            seconds, _ = timed(lambda: shutil.copyfile(big, work / "copy.bin"))
            (work / "copy.bin").unlink()
            cp_seconds, _ = timed(lambda: subprocess.run(["cp", str(big), str(work / "copy.bin")], check=True))
            (work / "copy.bin").unlink()
            # The registry fsyncs every blob before it exists (durability); cp does not unless asked.
            cp_sync_seconds, _ = timed(lambda: subprocess.run(
                ["dd", f"if={big}", f"of={work / 'copy.bin'}", "bs=4M", "conv=fsync", "status=none"], check=True))
            registry_cpu_before = cpu_seconds(registry.pid)
            with PeakRss(registry.pid) as push_rss:
                push_seconds, pushed = timed(lambda: cli(build, "push", str(source), "bench/large", "--registry",
                                                         ready["grpc_address"]))
            with PeakRss(registry.pid) as pull_rss:
                pull_seconds, _ = timed(lambda: cli(build, "pull", "bench/large", str(work / "pulled"), "--registry",
                                                    ready["grpc_address"]))
            registry_cpu = cpu_seconds(registry.pid) - registry_cpu_before
            assert pushed["uploaded_bytes"] == size
            cp_rate = size / MIB / cp_seconds
            rows.append((f"cp {arguments.size_mib} MiB", cp_seconds, cp_rate, 1.0, ""))
            rows.append((f"cp {arguments.size_mib} MiB + fsync (dd conv=fsync)", cp_sync_seconds,
                         size / MIB / cp_sync_seconds, cp_seconds / cp_sync_seconds, ""))
            rows.append((f"flotilla push {arguments.size_mib} MiB (incl. client sha256)", push_seconds,
                         size / MIB / push_seconds, cp_seconds / push_seconds, f"{push_rss.peak:.0f}"))
            rows.append((f"flotilla pull {arguments.size_mib} MiB (verified)", pull_seconds,
                         size / MIB / pull_seconds, cp_seconds / pull_seconds, f"{pull_rss.peak:.0f}"))
            for path in [big, work / "copy.bin"]:
                path.unlink()
            shutil.rmtree(work / "pulled")

            # snapshot_download vs a static file server, same files, same parallelism (8 workers).
            files = arguments.snapshot_files
            per_file = arguments.snapshot_mib * MIB // files
            snapshot = work / "snapshot"
            snapshot.mkdir()
            names = [f"model-{index + 1:05d}-of-{files:05d}.safetensors" for index in range(files)]
            for name in names:
                write_random_file(snapshot / name, per_file)
            cli(build, "push", str(snapshot), "bench/snapshot", "--registry", ready["grpc_address"])
            port = free_port()
            static = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                       "--directory", str(snapshot)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.0)
                (work / "static").mkdir()
                static_seconds = best_of(3, lambda: fetch_all(f"http://127.0.0.1:{port}", names, work / "static"))
            finally:
                static.terminate()
                static.wait()
            # The same plain-HTTP fetcher against Flotilla's resolve URLs: the server side alone.
            (work / "flotilla_plain").mkdir()
            plain_seconds = best_of(3, lambda: fetch_all(f"http://{ready['http_address']}/bench/snapshot/resolve/main",
                                                         names, work / "flotilla_plain"))
            environment = {**os.environ, "HF_ENDPOINT": f"http://{ready['http_address']}",
                           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            code = textwrap.dedent("""
                import time
                from huggingface_hub import snapshot_download
                start = time.perf_counter()
                snapshot_download("bench/snapshot", max_workers=8)
                print(time.perf_counter() - start)
            """)
            hub_runs = []
            with PeakRss(registry.pid) as snapshot_rss:
                for attempt in range(3):  # each into a fresh cache
                    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                            env={**environment, "HF_HOME": str(work / f"hf_home_{attempt}")})
                    hub_runs.append(float(result.stdout.strip().splitlines()[-1]))
                    shutil.rmtree(work / f"hf_home_{attempt}")
            hub_seconds = min(hub_runs)
            total = per_file * files / MIB
            rows.append((f"http.server, {files} files / {total:.0f} MiB, 8 threads", static_seconds,
                         total / static_seconds, 1.0, ""))
            rows.append((f"same fetcher from flotilla /resolve/ URLs", plain_seconds, total / plain_seconds,
                         static_seconds / plain_seconds, ""))
            rows.append((f"snapshot_download from flotilla, same files", hub_seconds, total / hub_seconds,
                         static_seconds / hub_seconds, f"{snapshot_rss.peak:.0f}"))
        finally:
            registry.terminate()
            registry.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nregistry CPU (user+sys) for the push and pull of {arguments.size_mib} MiB: {registry_cpu:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"\n{'transfer':<58} {'seconds':>8} {'MiB/s':>8} {'x baseline':>10} {'registry RSS MiB':>17}")
    for name, seconds, rate, ratio, rss in rows:
        print(f"{name:<58} {seconds:>8.2f} {rate:>8.0f} {ratio:>10.2f} {rss:>17}")


if __name__ == "__main__":
    main()
