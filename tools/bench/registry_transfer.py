#!/usr/bin/env python3
"""Registry transfer benchmark: push and pull of one large generated file over loopback next to
`cp` (and `dd conv=fsync`) of the same file on the same disk, and a many-file repo fetched with 8
threads from Flotilla's Hub API next to the same files served by `python -m http.server`:

- the same plain urllib fetcher against both servers (the servers alone);
- huggingface_hub's own per-file downloader (`file_download.http_get`, what hf_hub_download runs
  for each file) against both servers: the client's code path, same for both;
- `snapshot_download` from Flotilla (http.server cannot answer its API calls): http_get plus the
  repo listing, a HEAD per file and the cache layout, against http_get from http.server.

First, issue #14's comparisons, each contender interleaved with its baseline in the same run
(alternating which goes first), --runs repetitions, the load average printed beside each pair:

- `flotilla pull` (verified: sha256 of every byte) against `curl -o` fetching the same file from
  `python -m http.server`, one large file; and a sharded checkpoint (--shards files of the same
  total) pulled with its files in parallel against `curl -Z` (parallel) fetching the same files;
- `flotilla push` (client sha256, chunked upload, server sha256 and fsync) against
  `dd conv=fsync` writing the same file (each push into a fresh registry, so nothing dedups).

Beside each round: the CPU seconds per GiB of the client and of the server (user + sys). On a
shared machine the seconds swing with the load; the CPU per GiB does not, and says which
contender would win when the cores are busy.

Two rows are ceilings, not contenders: sha256 of the file on one core (the push hashes every byte
on the client and again on the server, before the commit exists) and the plainest loopback TCP
copy (sendfile, recv, write; no framing, no hash, no fsync), which bounds any network pull.

Prints a markdown table (transfer, MiB/s, x baseline) and a detailed one (seconds, registry RSS).

    python tools/bench/registry_transfer.py --size-mib 2048 --snapshot-files 20 --snapshot-mib 1024

Needs build/bin/flotilla-registry and build/bin/flotilla (or --build-dir).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


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


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def start_registry_in(build: Path, folder: Path) -> tuple[subprocess.Popen, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    return start_registry(build, folder)


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
    return run_cli(build / "bin" / "flotilla", *args)


def run_cli(flotilla: Path, *args: str) -> dict:
    result = subprocess.run([str(flotilla), *args, "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"flotilla {' '.join(args)} failed: {result.stderr}")
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def best_of(runs: int, prepare, operation) -> float:
    """The fastest of `runs` timings of operation(), each after prepare() and a sync, so that no
    run pays for the writeback of the dirty pages an earlier one left."""
    times = []
    for _ in range(runs):
        prepare()
        os.sync()
        times.append(timed(operation)[0])
    return min(times)


def raw_loopback_copy(source: Path, target: Path) -> None:
    """The plainest transfer over loopback TCP: sendfile on one end, recv + write on the other, no
    framing, no hashing, no fsync. Not a contender: the ceiling any network pull has here."""
    size = source.stat().st_size
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection, open(source, "rb") as file:
                offset = 0
                while offset < size:
                    offset += os.sendfile(connection.fileno(), file.fileno(), offset, size - offset)

        sender = threading.Thread(target=serve)
        sender.start()
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        with socket.create_connection(listener.getsockname()) as connection, open(target, "wb", buffering=0) as file:
            while received := connection.recv_into(buffer):
                file.write(view[:received])
        sender.join()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_server_cpu(pid_of, operation):
    """operation, returning the CPU seconds the server process (pid_of()) spent meanwhile."""
    def run() -> float:
        pid = pid_of()
        before = cpu_seconds(pid)
        operation()
        return cpu_seconds(pid) - before
    return run


# Note [Settle before each timing]: this VM's balloon driver reports free memory back to the host
# (free page reporting, 2 MiB blocks, about 2 s after they are freed; virtio-balloon's REPORTING
# feature), and the host then takes those pages away, so touching them again faults them back in
# through the host. `dd conv=fsync` of 1 GiB took 0.48-0.54 s (0.23-0.28 s system time) when it ran
# 0.5-1.5 s after the last 1 GiB file was deleted, and 2.65-2.97 s (2.2-2.5 s system time) when it
# ran 3-5 s after (2026-12-07, load 1.7): the page cache it fills came from freed pages the host
# still had, or from pages it had to give back. Which case a contender met depended on what ran
# just before it (a push deletes its registry's 1 GiB before the next round), hence dd's 300-2000
# MiB/s swings. So every timed operation starts the same way: after prepare() and a sync, SETTLE
# seconds of quiet, by which time every freed page has been reported.
SETTLE_SECONDS = 4.0


def settle() -> None:
    os.sync()
    time.sleep(SETTLE_SECONDS)


def interleaved(runs: int, contenders: dict, prepare) -> dict:
    """Runs each contender once per round, alternating which goes first, each after prepare(), a
    sync and a quiet SETTLE_SECONDS (Note [Settle before each timing]); returns {name: [(seconds,
    load average at the end, client CPU s, server CPU s), ...]}. With more than two contenders the
    order rotates. A contender returns its server's CPU seconds (see with_server_cpu); the client's
    are those of the child processes it ran."""
    results = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(runs):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        for name in (order if round_index % 2 == 0 else order[::-1]):
            prepare(name)
            settle()
            client_before = children_cpu_seconds()
            seconds, server_cpu = timed(contenders[name])
            results[name].append((seconds, os.getloadavg()[0], children_cpu_seconds() - client_before,
                                  server_cpu if isinstance(server_cpu, float) else 0.0))
    return results


def print_pairs(title: str, size_mib: float, results: dict, contender: str, baseline: str) -> tuple:
    """Prints every round's pair (MiB/s, CPU seconds per GiB of client and server, load); returns
    the median rates, the median of the per-round ratios contender / baseline, and the median CPU
    seconds per GiB (client + server) of each."""
    print(f"\n{title}: {size_mib:.0f} MiB, {len(results[contender])} rounds; CPU = client + server seconds per GiB")
    print(f"{'round':>5} {contender + ' MiB/s':>22} {'CPU':>11} {baseline + ' MiB/s':>24} {'CPU':>11} {'ratio':>7} "
          f"{'load (1 min)':>13}")
    ratios = []
    per_gib = size_mib / 1024
    for index, (mine, theirs) in enumerate(zip(results[contender], results[baseline])):
        ratios.append(theirs[0] / mine[0])
        print(f"{index + 1:>5} {size_mib / mine[0]:>22.0f} {mine[2] / per_gib:>5.2f}+{mine[3] / per_gib:<5.2f} "
              f"{size_mib / theirs[0]:>24.0f} {theirs[2] / per_gib:>5.2f}+{theirs[3] / per_gib:<5.2f} "
              f"{ratios[-1]:>7.2f} {max(mine[1], theirs[1]):>13.1f}")
    contender_rate = median([size_mib / run[0] for run in results[contender]])
    baseline_rate = median([size_mib / run[0] for run in results[baseline]])
    contender_cpu = median([(run[2] + run[3]) / per_gib for run in results[contender]])
    baseline_cpu = median([(run[2] + run[3]) / per_gib for run in results[baseline]])
    print(f"median {contender_rate:>21.0f} {contender_cpu:>11.2f} {baseline_rate:>24.0f} {baseline_cpu:>11.2f} "
          f"{median(ratios):>7.2f}")
    return contender_rate, baseline_rate, median(ratios), contender_cpu, baseline_cpu


def start_static_server(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url
        except OSError:
            time.sleep(0.05)
    sys.exit("python -m http.server did not start")


def versus_curl_and_dd(build: Path, work: Path, size_mib: int, shards: int, runs: int,
                       other_cli: Path | None = None, only_push: bool = False,
                       only_pull: bool = False) -> list[tuple]:
    """Issue #14's targets: pull vs curl (one file, and `shards` files), push vs dd conv=fsync."""
    size = size_mib * MIB
    source = work / "versus"
    source.mkdir()
    big = source / "model.safetensors"
    write_random_file(big, size)
    # A file of other bytes uploaded through hf_xet: stored only as xorbs' chunks (Note [One store,
    # two views] in xet_store.h), so its pull reads through a reconstruction, not a blob.
    xet_source = work / "versus_xet"
    xet_source.mkdir()
    write_random_file(xet_source / "model.safetensors", size)
    sharded = work / "versus_sharded"
    sharded.mkdir()
    shard_names = [f"model-{index + 1:05d}-of-{shards:05d}.safetensors" for index in range(shards)]
    for name in shard_names:
        write_random_file(sharded / name, size // shards)
    summary = []

    if not only_pull:
        # Push vs dd conv=fsync: every push into a fresh registry, so nothing is already stored.
        registries = []

        def stop_last_registry() -> None:
            # Outside the timed call: a child reaped there would add its CPU to the client's.
            if registries and registries[-1][0].poll() is None:
                registries[-1][0].terminate()
                registries[-1][0].wait()
                shutil.rmtree(work / f"push-{len(registries) - 1}", ignore_errors=True)

        def prepare_push(name: str) -> None:
            (work / "dd.bin").unlink(missing_ok=True)
            # Each round is a first push: the digest the last one remembered (Note [Remembered
            # digests] in remembered_digest.h) would spare this one its hash pass.
            try:
                os.removexattr(big, "user.flotilla.sha256")
            except OSError:
                pass
            stop_last_registry()
            if name.startswith("flotilla push"):
                registries.append(start_registry_in(build, work / f"push-{len(registries)}"))

        def push(flotilla: Path) -> float:
            process, ready = registries[-1]
            started = cpu_seconds(process.pid)  # its start-up is not the push's
            run_cli(flotilla, "push", str(source), "bench/large", "--registry", ready["grpc_address"])
            return cpu_seconds(process.pid) - started

        contenders = {
            "flotilla push": lambda: push(build / "bin" / "flotilla"),
            "dd conv=fsync": lambda: subprocess.run(["dd", f"if={big}", f"of={work / 'dd.bin'}", "bs=4M", "conv=fsync",
                                                     "status=none"], check=True),
            # The fastest durable write of the file here: no page cache at all (the push writes this way).
            "dd oflag=direct": lambda: subprocess.run(["dd", f"if={big}", f"of={work / 'dd.bin'}", "bs=8M", "oflag=direct",
                                                       "conv=fsync", "status=none"], check=True),
        }
        if other_cli is not None:
            contenders["flotilla push (other CLI)"] = lambda: push(other_cli)
        results = interleaved(runs, contenders, prepare_push)
        stop_last_registry()
        (work / "dd.bin").unlink(missing_ok=True)
        summary.append(("flotilla push (hashed, fsynced) vs dd conv=fsync", size_mib,
                        *print_pairs("push vs dd conv=fsync", size_mib, results, "flotilla push", "dd conv=fsync")))
        summary.append(("flotilla push vs dd oflag=direct conv=fsync", size_mib,
                        *print_pairs("push vs dd oflag=direct", size_mib, results, "flotilla push", "dd oflag=direct")))
        if other_cli is not None:
            summary.append((f"flotilla push vs the same push by {other_cli}", size_mib,
                            *print_pairs("push vs push by the other CLI", size_mib, results, "flotilla push",
                                         "flotilla push (other CLI)")))
    if only_push:
        return summary

    # Pull vs curl from python -m http.server, one file and then the shards.
    registry, ready = start_registry_in(build, work / "pull-registry")
    try:
        cli(build, "push", str(source), "bench/large", "--registry", ready["grpc_address"])
        cli(build, "push", str(sharded), "bench/sharded", "--registry", ready["grpc_address"])
        upload_through_xet(ready["http_address"], xet_source, "bench/xet", work / "hf_home")
        for title, folder, repository, names in [
                ("pull vs curl, one file", source, "bench/large", ["model.safetensors"]),
                (f"pull vs curl, {shards} shards", sharded, "bench/sharded", shard_names),
                ("pull vs curl, one file uploaded through hf_xet (stored as chunks)", xet_source, "bench/xet",
                 ["model.safetensors"])]:
            static, url = start_static_server(folder)
            try:
                curl = ["curl", "--silent", "--no-progress-meter", "--fail"] + (["-Z"] if len(names) > 1 else [])
                for name in names:
                    curl += ["-o", str(work / "fetched" / name), f"{url}/{name}"]
                contenders = {
                    "flotilla pull": with_server_cpu(lambda: registry.pid, lambda: cli(
                        build, "pull", repository, str(work / "fetched"), "--registry", ready["grpc_address"])),
                    "curl": with_server_cpu(lambda: static.pid, lambda: subprocess.run(
                        curl, check=True, stdout=subprocess.DEVNULL)),
                }
                if other_cli is not None:
                    contenders["flotilla pull (other CLI)"] = with_server_cpu(lambda: registry.pid, lambda: run_cli(
                        other_cli, "pull", repository, str(work / "fetched"), "--registry", ready["grpc_address"]))
                def fresh_target(name: str = "") -> None:
                    shutil.rmtree(work / "fetched", ignore_errors=True)
                    (work / "fetched").mkdir()

                # Note [Pull from memory]: each server reads its file from the page cache, as curl's
                # http.server does: a pushed blob was written past the page cache (Note [Direct
                # upload writes] in blob_store.cc), so without this untimed pull the first round
                # alone would read it from disk (0.70x against 0.81-0.92x for the later rounds,
                # registry CPU 0.57 against 0.32 s/GiB; 2026-12-07).
                for warm_up in contenders.values():
                    fresh_target()
                    warm_up()
                results = interleaved(runs, contenders, fresh_target)
                summary.append((f"flotilla pull (verified) vs curl from http.server, {title.split(', ', 1)[1]}",
                                size_mib, *print_pairs(title, size_mib, results, "flotilla pull", "curl")))
                if other_cli is not None:
                    summary.append((f"flotilla pull vs the same pull by {other_cli}, {title.split(', ', 1)[1]}", size_mib,
                                    *print_pairs(title + ", against the other CLI", size_mib, results, "flotilla pull",
                                                 "flotilla pull (other CLI)")))
            finally:
                static.terminate()
                static.wait()
    finally:
        registry.terminate()
        registry.wait()
        shutil.rmtree(work / "fetched", ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(sharded, ignore_errors=True)
        shutil.rmtree(xet_source, ignore_errors=True)
    return summary


def upload_through_xet(http_address: str, folder: Path, repository: str, home: Path) -> None:
    """huggingface_hub's upload_folder in its default environment (hf_xet: xorbs and a shard)."""
    environment = {**os.environ, "HF_ENDPOINT": f"http://{http_address}", "HF_HOME": str(home),
                   "HF_HUB_DISABLE_TELEMETRY": "1"}
    environment.pop("HF_HUB_DISABLE_XET", None)
    code = textwrap.dedent(f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("{repository}", exist_ok=True)
        api.upload_folder(folder_path="{folder}", repo_id="{repository}")
    """)
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"upload through hf_xet failed: {result.stderr[-2000:]}")


def fetch_all(base_url: str, names: list[str], target: Path, workers: int = 8) -> None:
    def fetch(name: str) -> None:
        with urllib.request.urlopen(f"{base_url}/{name}") as response, open(target / name, "wb") as file:
            while chunk := response.read(10 * MIB):
                file.write(chunk)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, names))


HUB_HTTP_GET = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from huggingface_hub.file_download import http_get
    base, target, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    def fetch(name):
        with open(os.path.join(target, name), "wb") as file:
            http_get(f"{base}/{name}", file)
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, names))
    print(time.perf_counter() - start)
""")

HUB_SNAPSHOT = textwrap.dedent("""
    import time
    from huggingface_hub import snapshot_download
    start = time.perf_counter()
    snapshot_download("bench/snapshot", max_workers=8)
    print(time.perf_counter() - start)
""")


def timed_python(code: str, *args: str, environment: dict | None = None) -> float:
    """Runs `code` in a fresh interpreter; the seconds it prints (its own timing, without start-up)."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                            env=environment)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    global SETTLE_SECONDS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the single large file")
    parser.add_argument("--snapshot-files", type=int, default=20)
    parser.add_argument("--snapshot-mib", type=int, default=1024, help="total size of the snapshot repo")
    parser.add_argument("--build-dir", type=Path, default=REPOSITORY / "build")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of each interleaved comparison, and runs of "
                        "each snapshot row (the fastest counts)")
    parser.add_argument("--shards", type=int, default=4, help="files of the sharded pull (same total size)")
    parser.add_argument("--only-versus", action="store_true",
                        help="only pull vs curl and push vs dd (issue #14's targets), not the other rows")
    parser.add_argument("--only-push", action="store_true", help="with --only-versus: only the push comparison")
    parser.add_argument("--only-pull", action="store_true", help="with --only-versus: only the pull comparisons")
    parser.add_argument("--other-cli", type=Path, default=None,
                        help="another flotilla binary (e.g. main's build) whose push joins the push rounds")
    parser.add_argument("--settle-seconds", type=float, default=SETTLE_SECONDS,
                        help="quiet seconds before each timed operation (Note [Settle before each timing])")
    arguments = parser.parse_args()
    SETTLE_SECONDS = arguments.settle_seconds
    build = arguments.build_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="registry_bench_", dir=arguments.work_dir))
    rows = []
    registry_cpu = 0.0
    try:
        versus = versus_curl_and_dd(build, work, arguments.size_mib, arguments.shards, arguments.runs,
                                    arguments.other_cli.resolve() if arguments.other_cli else None,
                                    arguments.only_push, arguments.only_pull)
        load = os.getloadavg()
        print(f"\nload average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on {os.cpu_count()} CPUs")
        print("\n| comparison (same run, interleaved) | MiB | contender MiB/s | baseline MiB/s | ratio "
              "| CPU s/GiB contender | CPU s/GiB baseline |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, mib, contender_rate, baseline_rate, ratio, contender_cpu, baseline_cpu in versus:
            print(f"| {name} | {mib} | {contender_rate:.0f} | {baseline_rate:.0f} | {ratio:.2f}× | {contender_cpu:.2f} "
                  f"| {baseline_cpu:.2f} |")
        print("(medians over the rounds; CPU = client + server user+sys seconds per GiB)")
        if arguments.only_versus:
            return
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
            copy = work / "copy.bin"
            cp_seconds = best_of(3, lambda: copy.unlink(missing_ok=True),
                                 lambda: subprocess.run(["cp", str(big), str(copy)], check=True))
            # The registry fsyncs every blob before it exists (durability); cp does not unless asked.
            copy.unlink()
            os.sync()
            cp_sync_seconds, _ = timed(lambda: subprocess.run(
                ["dd", f"if={big}", f"of={copy}", "bs=4M", "conv=fsync", "status=none"], check=True))
            hash_seconds, _ = timed(lambda: sha256_of(big))
            raw_seconds = best_of(3, lambda: copy.unlink(missing_ok=True), lambda: raw_loopback_copy(big, copy))
            copy.unlink()
            registry_cpu_before = cpu_seconds(registry.pid)
            os.sync()
            with PeakRss(registry.pid) as push_rss:
                # Once only: a second push of the same bytes uploads nothing (the blob is there).
                push_seconds, pushed = timed(lambda: cli(build, "push", str(source), "bench/large", "--registry",
                                                         ready["grpc_address"]))
            with PeakRss(registry.pid) as pull_rss:
                pull_seconds = best_of(3, lambda: shutil.rmtree(work / "pulled", ignore_errors=True),
                                       lambda: cli(build, "pull", "bench/large", str(work / "pulled"), "--registry",
                                                   ready["grpc_address"]))
            registry_cpu = cpu_seconds(registry.pid) - registry_cpu_before
            assert pushed["uploaded_bytes"] == size
            cp_rate = size / MIB / cp_seconds
            rate = lambda seconds: size / MIB / seconds
            rows.append((f"cp {arguments.size_mib} MiB (best of 3)", cp_seconds, cp_rate, 1.0, "", ""))
            rows.append((f"dd conv=fsync {arguments.size_mib} MiB (cp + fsync)", cp_sync_seconds,
                         rate(cp_sync_seconds), cp_seconds / cp_sync_seconds, "", "cp"))
            rows.append((f"sha256 of {arguments.size_mib} MiB (hashlib; the push's client hash pass)", hash_seconds,
                         rate(hash_seconds), cp_seconds / hash_seconds, "", "cp"))
            rows.append((f"raw TCP loopback, sendfile -> recv -> write (best of 3)", raw_seconds,
                         rate(raw_seconds), cp_seconds / raw_seconds, "", "cp"))
            rows.append((f"flotilla push {arguments.size_mib} MiB (incl. client sha256)", push_seconds,
                         rate(push_seconds), cp_seconds / push_seconds, f"{push_rss.peak:.0f}", "cp"))
            rows.append((f"flotilla push {arguments.size_mib} MiB (incl. client sha256)", push_seconds,
                         rate(push_seconds), cp_sync_seconds / push_seconds, "", "dd conv=fsync"))
            rows.append((f"flotilla pull {arguments.size_mib} MiB (verified, best of 3)", pull_seconds,
                         rate(pull_seconds), cp_seconds / pull_seconds, f"{pull_rss.peak:.0f}", "cp"))
            big.unlink()
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
            static_url = f"http://127.0.0.1:{port}"
            flotilla_url = f"http://{ready['http_address']}/bench/snapshot/resolve/main"
            hub_environment = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0"}
            runs = arguments.runs

            def fresh(folder: str) -> Path:
                shutil.rmtree(work / folder, ignore_errors=True)
                (work / folder).mkdir()
                return work / folder

            # Rounds alternate the contenders, so a burst of load elsewhere hits both alike.
            times = {key: [] for key in ["plain_static", "plain_flotilla", "hub_static", "hub_flotilla", "snapshot"]}
            try:
                time.sleep(1.0)
                with PeakRss(registry.pid) as snapshot_rss:
                    for attempt in range(runs):
                        times["plain_static"].append(timed(lambda: fetch_all(static_url, names, fresh("plain")))[0])
                        times["plain_flotilla"].append(timed(lambda: fetch_all(flotilla_url, names, fresh("plain")))[0])
                        times["hub_static"].append(timed_python(HUB_HTTP_GET, static_url, str(fresh("hub")), *names,
                                                                environment=hub_environment))
                        times["hub_flotilla"].append(timed_python(HUB_HTTP_GET, flotilla_url, str(fresh("hub")),
                                                                  *names, environment=hub_environment))
                        times["snapshot"].append(timed_python(HUB_SNAPSHOT, environment={
                            **hub_environment, "HF_ENDPOINT": f"http://{ready['http_address']}",
                            "HF_HOME": str(fresh("hf_home"))}))
            finally:
                static.terminate()
                static.wait()
            shutil.rmtree(work / "plain", ignore_errors=True)
            shutil.rmtree(work / "hub", ignore_errors=True)
            shutil.rmtree(work / "hf_home", ignore_errors=True)
            best_times = {key: min(values) for key, values in times.items()}
            total = per_file * files / MIB
            what = f"{files} files / {total:.0f} MiB, 8 threads"
            labels = {"plain_static": "urllib from http.server", "hub_static": "http_get from http.server"}
            snapshot_rows = [
                (f"urllib fetcher from http.server, {what}", "plain_static", "plain_static", ""),
                ("urllib fetcher from flotilla /resolve/", "plain_flotilla", "plain_static", ""),
                (f"huggingface_hub http_get from http.server, {what}", "hub_static", "hub_static", ""),
                ("huggingface_hub http_get from flotilla /resolve/", "hub_flotilla", "hub_static", ""),
                ("snapshot_download from flotilla", "snapshot", "hub_static", f"{snapshot_rss.peak:.0f}"),
            ]
            for name, key, baseline, rss in snapshot_rows:
                rows.append((name, best_times[key], total / best_times[key], best_times[baseline] / best_times[key],
                             rss, "" if key == baseline else labels[baseline]))
            print("snapshot rows, every run (s): " + json.dumps({key: [round(value, 2) for value in values]
                                                                 for key, values in times.items()}))
        finally:
            registry.terminate()
            registry.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    print(f"\nregistry CPU (user+sys) for the push and pull of {arguments.size_mib} MiB: {registry_cpu:.2f} s; "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on {os.cpu_count()} CPUs")
    print(f"\n{'transfer':<62} {'seconds':>8} {'MiB/s':>8} {'x baseline':>10} {'baseline':<26} {'registry RSS MiB':>16}")
    for name, seconds, rate, ratio, rss, baseline in rows:
        print(f"{name:<62} {seconds:>8.2f} {rate:>8.0f} {ratio:>10.2f} {baseline or '(reference)':<26} {rss:>16}")
    # The same rows as a markdown table, for notes and issues.
    print("\n| transfer | MiB/s | × baseline |\n| --- | ---: | ---: |")
    for name, seconds, rate, ratio, rss, baseline in rows:
        print(f"| {name} | {rate:.0f} | " + (f"{ratio:.2f}× {baseline} |" if baseline else "reference |"))


if __name__ == "__main__":
    main()
