#!/usr/bin/env python3
"""What the gateway adds per request and per token: the same greedy requests (32-token prompts of
token ids, 32 output tokens, `ignore_eos`, one at a time, a fresh prompt each so no prefix-cache
hit) sent straight to the worker's gRPC `Generate` and through the gateway's streaming
/v1/completions, alternating. Prints median TTFT and ITL of both and their difference.

    python tools/bench/serving_overhead.py [--build-dir build] [--checkpoint FOLDER] [--requests 8]

It brings up its own mesh (`flotilla up --serve`) in a temporary data directory, loopback only, and
takes it down at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def stubs():
    from grpc_tools import protoc  # noqa: PLC0415

    output = tempfile.mkdtemp()
    protoc.main(["protoc", f"-I{REPOSITORY / 'proto'}", f"--python_out={output}", f"--grpc_python_out={output}",
                 "flotilla/v1/common.proto", "flotilla/v1/worker.proto"])
    sys.path.insert(0, output)
    from flotilla.v1 import worker_pb2, worker_pb2_grpc  # noqa: PLC0415

    return worker_pb2, worker_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=str(REPOSITORY / "build"))
    parser.add_argument("--checkpoint", default=str(REPOSITORY / "tests/fixtures/generated/models/smollm2/checkpoint"))
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--output-tokens", type=int, default=32)
    arguments = parser.parse_args()
    import grpc  # noqa: PLC0415

    worker_pb2, worker_pb2_grpc = stubs()
    flotilla = str(Path(arguments.build_dir) / "bin" / "flotilla")
    home = tempfile.mkdtemp(prefix="flotilla-overhead-")
    environment = {**os.environ, "FLOTILLA_HOME": home}
    subprocess.run([flotilla, "up", "--port-base", "0", "--serve", f"{arguments.checkpoint}=smollm2"], check=True,
                   env=environment, stdout=subprocess.DEVNULL)
    try:
        status = json.loads(subprocess.run([flotilla, "status", "--json"], check=True, env=environment,
                                           capture_output=True, text=True).stdout)
        gateway = next(service["http_address"] for service in status["services"] if service["name"] == "gateway")
        stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(status["workers"][0]["grpc_address"]))
        generator = random.Random(0)
        count = arguments.output_tokens

        def prompt():
            return [generator.randint(1000, 20000) for _ in range(32)]

        def direct(ids):
            request = worker_pb2.WorkerGenerateRequest(request_id=f"overhead-{generator.random()}", prompt_token_ids=ids,
                                                       max_tokens=count, ignore_eos=True)
            start, times = time.perf_counter(), []
            for response in stub.Generate(request):
                times.extend(time.perf_counter() for _ in response.tokens)
            return times[0] - start, [b - a for a, b in zip(times, times[1:])]

        def through_gateway(ids):
            body = {"model": "smollm2", "prompt": ids, "max_tokens": count, "ignore_eos": True, "stream": True,
                    "temperature": 0}
            request = urllib.request.Request(f"http://{gateway}/v1/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            start, times = time.perf_counter(), []
            with urllib.request.urlopen(request) as response:
                times.extend(time.perf_counter() for line in response if line.startswith(b"data: {"))
            return times[0] - start, [b - a for a, b in zip(times, times[1:])]

        direct(prompt())
        through_gateway(prompt())  # warm-up
        results = {"direct": ([], []), "gateway": ([], [])}
        for _ in range(arguments.requests):
            for name, run in (("direct", direct), ("gateway", through_gateway)):
                ttft, itl = run(prompt())
                results[name][0].append(ttft)
                results[name][1].extend(itl)
        median = {name: (statistics.median(ttfts) * 1e3, statistics.median(itls) * 1e3)
                  for name, (ttfts, itls) in results.items()}
        print(f"| path | TTFT median ms | ITL median ms |\n|---|---|---|")
        for name, (ttft, itl) in median.items():
            print(f"| {name} | {ttft:.2f} | {itl:.2f} |")
        print(f"gateway adds {median['gateway'][0] - median['direct'][0]:.2f} ms to the first token and "
              f"{median['gateway'][1] - median['direct'][1]:.2f} ms to the median gap between tokens "
              f"(load average {os.getloadavg()[0]:.2f})")
    finally:
        subprocess.run([flotilla, "down"], env=environment, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
