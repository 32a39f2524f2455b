#!/usr/bin/env python3
"""Tensor-parallel worker groups on this machine (issue #12), same run:

1. Decode tokens/s at batch 1 of a SmolLM2-sized random llama whose heads divide by 2 (576 hidden,
   30 layers, 8 heads / 4 KV heads, 49152 vocab, float32): TP=1 on one core with one thread, TP=2
   with each rank pinned to its own core and one thread per rank, and TP=1 with 2 threads. A
   128-token prompt, 64 new tokens, straight to rank 0's gRPC Generate; the median of 3.
2. The time a failover adds to an affected stream: SmolLM2 on two replicas behind a gateway, one
   long stream; the replica serving it is SIGKILLed (its rank process, so the agent restarts it)
   after 8 tokens; reported: from the kill to the next token the client receives, and the
   stream's usual inter-token latency beside it.
3. Cold start of a replica from a local folder (process start to serving: load and ready) against
   transformers' `from_pretrained` of the same checkpoint in a fresh Python process.

    python tools/bench/tensor_parallel.py [--build-dir build] [--smollm2 FOLDER]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def stubs():
    from grpc_tools import protoc  # noqa: PLC0415

    output = tempfile.mkdtemp()
    protoc.main(["protoc", f"-I{REPOSITORY / 'proto'}", f"--python_out={output}", f"--grpc_python_out={output}",
                 "flotilla/v1/common.proto", "flotilla/v1/preprocess.proto",
                 "flotilla/v1/worker.proto", "flotilla/v1/gateway.proto"])
    sys.path.insert(0, output)
    from flotilla.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: PLC0415

    return common_pb2, gateway_pb2, gateway_pb2_grpc, worker_pb2, worker_pb2_grpc


class Service:
    def __init__(self, binary: Path, directory: Path, name: str, *flags: str, environment=None):
        directory.mkdir(parents=True, exist_ok=True)
        self.ready_file = directory / f"{name}.ready"
        self.ready_file.unlink(missing_ok=True)
        self.log = directory / f"{name}.log"
        self.started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "--grpc_listen=127.0.0.1:0", "--http_listen=127.0.0.1:0",
                 f"--data_dir={directory / 'data'}", f"--ready_file={self.ready_file}", *flags],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(environment or {})})

    def wait_ready(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.log}: {self.log.read_text()[-2000:]}")
            time.sleep(0.01)
        self.ready_seconds = time.perf_counter() - self.started
        return json.loads(self.ready_file.read_text())

    def ranks(self) -> list[int]:
        pid = self.process.pid
        try:
            return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def pin_every_thread(pid: int, cores: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except OSError:
            pass


def write_checkpoint(folder: Path) -> None:
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    if (folder / "config.json").exists():
        return
    config = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=8, num_key_value_heads=4, vocab_size=49152,
                                      max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def decode_tokens_per_second(modules, address: str, runs: int = 3) -> float:
    import grpc  # noqa: PLC0415

    _, _, _, worker_pb2, worker_pb2_grpc = modules
    stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(address))
    rates = []
    for run in range(runs + 1):  # the first one warms up
        prompt = [(run * 977 + index * 131) % 40000 + 100 for index in range(128)]
        request = worker_pb2.WorkerGenerateRequest(request_id=f"tp-bench-{run}", prompt_token_ids=prompt,
                                                   max_tokens=64, ignore_eos=True)
        times = []
        for response in stub.Generate(request, timeout=600):
            times.extend(time.perf_counter() for _ in response.tokens)
        if run:
            rates.append((len(times) - 1) / (times[-1] - times[0]))
    return statistics.median(rates)


def bench_decode(modules, worker: Path, folder: Path, directory: Path) -> list[tuple[str, float]]:
    rows = []
    cases = [("TP=1, 1 core, 1 thread", 1, {"OMP_NUM_THREADS": "1"}, [{0}]),
             ("TP=2, 1 core and 1 thread per rank", 2, {"OMP_NUM_THREADS": "1"}, [{0}, {1}]),
             ("TP=1, 2 threads", 1, {"OMP_NUM_THREADS": "2"}, None)]
    for label, size, environment, pins in cases:
        service = Service(worker, directory / f"decode-{size}-{len(rows)}", "worker", f"--model={folder}",
                          f"--tensor_parallel_size={size}", "--kv_cache_memory=134217728", environment=environment)
        try:
            ready = service.wait_ready()
            if pins:
                for pid, cores in zip(service.ranks(), pins):
                    pin_every_thread(pid, cores)
            rate = decode_tokens_per_second(modules, ready["grpc_address"])
            rows.append((label, rate))
            print(f"  {label}: {rate:.1f} tokens/s", flush=True)
        finally:
            service.stop()
    return rows


def bench_failover(modules, build: Path, smollm2: Path, directory: Path, trials: int = 3) -> list[tuple[float, float]]:
    import grpc  # noqa: PLC0415

    common_pb2, gateway_pb2, gateway_pb2_grpc, worker_pb2, worker_pb2_grpc = modules
    gateway = Service(build / "flotilla-gateway", directory / "gateway", "gateway")
    gateway_address = gateway.wait_ready()["grpc_address"]
    workers = [Service(build / "flotilla-worker", directory / f"replica-{replica}", "worker", f"--model={smollm2}",
                       "--served_model_name=smollm2", f"--replica={replica}", f"--gateways={gateway_address}",
                       "--kv_cache_memory=134217728") for replica in range(2)]
    results = []
    try:
        for worker in workers:
            worker.wait_ready()
        stub = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(gateway_address))

        def replicas() -> int:
            for model in stub.ListModels(gateway_pb2.ListModelsRequest(), timeout=10).models:
                if model.name == "smollm2":
                    return model.replicas
            return 0

        for trial in range(trials):
            while replicas() < 2:
                time.sleep(0.1)
            time.sleep(1)
            arrivals, killed_at = [], []
            request = gateway_pb2.GenerateRequest(
                model="smollm2", prompt_ids=common_pb2.TokenIds(ids=[1, 504, 3458, 282, 4649, 314] * (trial + 1)),
                sampling=gateway_pb2.SamplingParameters(max_new_tokens=48, ignore_eos=True))

            def kill_the_serving_replica():
                for worker in workers:
                    ready = json.loads(worker.ready_file.read_text())
                    load_stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(ready["grpc_address"]))
                    load = load_stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=5)
                    if load.num_requests_running > 0:
                        killed_at.append(time.perf_counter())
                        os.kill(worker.ranks()[0], signal.SIGKILL)
                        return

            for response in stub.Generate(request, timeout=600):
                arrivals.extend(time.perf_counter() for _ in response.token_ids)
                if len(arrivals) == 8 and not killed_at:
                    threading.Thread(target=kill_the_serving_replica).start()
            assert killed_at and len(arrivals) == 48, (killed_at, len(arrivals))
            after = [moment for moment in arrivals if moment > killed_at[0]]
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
            results.append((after[0] - killed_at[0], statistics.median(gaps)))
            print(f"  trial {trial}: kill -> next token {results[-1][0] * 1000:.0f} ms "
                  f"(median inter-token {results[-1][1] * 1000:.0f} ms)", flush=True)
    finally:
        for worker in workers:
            worker.stop()
        gateway.stop()
    return results


def bench_cold_start(worker: Path, smollm2: Path, directory: Path) -> tuple[float, float, float]:
    starts = []
    for run in range(3):
        service = Service(worker, directory / f"cold-{run}", "worker", f"--model={smollm2}",
                          "--kv_cache_memory=134217728")
        try:
            service.wait_ready()
            starts.append(service.ready_seconds)
        finally:
            service.stop()
    script = ("import time; t = time.perf_counter(); import torch, transformers; i = time.perf_counter(); "
              f"m = transformers.AutoModelForCausalLM.from_pretrained({str(smollm2)!r}, dtype=torch.float32); "
              "print(time.perf_counter() - t, time.perf_counter() - i)")
    totals, loads = [], []
    for _ in range(3):
        total, load = map(float, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                check=True).stdout.split())
        totals.append(total)
        loads.append(load)
    return statistics.median(starts), statistics.median(totals), statistics.median(loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=str(REPOSITORY / "build"))
    parser.add_argument("--smollm2", default=str(REPOSITORY / "tests/fixtures/generated/models/smollm2/checkpoint"))
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "flotilla-bench-tp"))
    arguments = parser.parse_args()
    build = Path(arguments.build_dir) / "bin"
    directory = Path(arguments.work_dir)
    modules = stubs()
    folder = directory / "llama-576x30-8heads"
    write_checkpoint(folder)

    print("decode, batch 1 (128-token prompt, 64 new tokens):", flush=True)
    decode = bench_decode(modules, build / "flotilla-worker", folder, directory)
    print("failover of an affected stream (SmolLM2, 2 replicas behind a gateway):", flush=True)
    failover = bench_failover(modules, build, Path(arguments.smollm2), directory)
    print("cold start (SmolLM2 from a local folder):", flush=True)
    worker_start, transformers_total, transformers_load = bench_cold_start(build / "flotilla-worker",
                                                                           Path(arguments.smollm2), directory)

    print("\n| measurement | value |\n|---|---|")
    for label, rate in decode:
        print(f"| decode tokens/s, {label} | {rate:.1f} |")
    print(f"| failover: kill -> next token, median of {len(failover)} (ms) | "
          f"{statistics.median(kill for kill, _ in failover) * 1000:.0f} |")
    print(f"| failover: the stream's median inter-token latency (ms) | "
          f"{statistics.median(gap for _, gap in failover) * 1000:.0f} |")
    print(f"| cold start: flotilla-worker, process start to serving (s) | {worker_start:.2f} |")
    print(f"| cold start: python -c 'import transformers; from_pretrained' (s) | {transformers_total:.2f} |")
    print(f"| cold start: transformers from_pretrained alone, after imports (s) | {transformers_load:.2f} |")


if __name__ == "__main__":
    main()
