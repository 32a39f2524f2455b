#!/usr/bin/env python3
"""Gateways hold no per-step state, so two gateway replicas in front of one worker should serve as
fast as one: the same 32 concurrent requests (128-token prompts, 64 output tokens, greedy,
`ignore_eos`, streamed) through one gateway, then split 16 + 16 over two gateways the worker
registered with. Prints both rows with `vllm bench serve`'s metrics (serving_load.py).

    python tools/bench/serving_two_gateways.py [--build-dir build] [--checkpoint FOLDER]

Starts its own processes on free loopback ports (two gateways, one worker) and stops them at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

import serving_load

REPOSITORY = Path(__file__).resolve().parents[2]


def start(binary: Path, directory: Path, name: str, *flags: str) -> tuple[subprocess.Popen, dict]:
    ready = directory / f"{name}.ready"
    log = open(directory / f"{name}.log", "wb")
    process = subprocess.Popen([str(binary), "--grpc_listen=127.0.0.1:0", "--http_listen=127.0.0.1:0",
                                f"--ready_file={ready}", f"--data_dir={directory / name}", *flags],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {(directory / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=str(REPOSITORY / "build"))
    parser.add_argument("--checkpoint", default=str(REPOSITORY / "tests/fixtures/generated/models/smollm2/checkpoint"))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=64)
    arguments = parser.parse_args()
    binaries = Path(arguments.build_dir) / "bin"
    directory = Path(tempfile.mkdtemp(prefix="flotilla-two-gateways-"))
    processes = []
    try:
        first, first_ready = start(binaries / "flotilla-gateway", directory, "gateway-1")
        second, second_ready = start(binaries / "flotilla-gateway", directory, "gateway-2")
        processes += [first, second]
        worker, _ = start(binaries / "flotilla-worker", directory, "worker", f"--model={arguments.checkpoint}",
                          "--served_model_name=smollm2",
                          f"--gateways={first_ready['grpc_address']},{second_ready['grpc_address']}")
        processes.append(worker)
        urls = [f"http://{ready['http_address']}/v1" for ready in (first_ready, second_ready)]
        for url in urls:
            asyncio.run(serving_load.wait_until_ready(f"{url}/models", 60))
        tokenizer = Path(arguments.checkpoint) / "tokenizer.json"
        count = arguments.requests

        def payloads(seed: int) -> list[dict]:
            prompts = serving_load.build_prompts(tokenizer, count, 128, seed)
            return [serving_load.completion_payload("smollm2", prompt, arguments.output_tokens, chat=False)
                    for prompt in prompts]

        async def run(split: bool, seed: int):
            batch = payloads(seed)
            if not split:
                return await serving_load.run_open_loop(f"{urls[0]}/completions", batch, False, float("inf"), count, 600)
            halves = await asyncio.gather(
                serving_load.run_open_loop(f"{urls[0]}/completions", batch[: count // 2], False, float("inf"), count // 2, 600),
                serving_load.run_open_loop(f"{urls[1]}/completions", batch[count // 2:], False, float("inf"), count // 2, 600))
            return halves[0][0] + halves[1][0], max(halves[0][1], halves[1][1])

        asyncio.run(run(False, seed=100))  # warm-up
        rows = []
        for label, split, seed in (("one gateway", False, 1), ("two gateways", True, 2), ("one gateway", False, 3),
                                   ("two gateways", True, 4)):
            records, duration = asyncio.run(run(split, seed))
            rows.append((label, serving_load.summarize(records, duration, arguments.output_tokens)))
        print("| front door | ok/fail | out tok/s | TTFT median ms | ITL median ms | E2EL median ms |")
        print("|---|---|---|---|---|---|")
        for label, metrics in rows:
            print(f"| {label} | {metrics['completed']}/{metrics['failed']} | {metrics['output_throughput']:.1f} | "
                  f"{metrics['median_ttft_ms']:.1f} | {metrics['median_itl_ms']:.1f} | {metrics['median_e2el_ms']:.1f} |")
        print(f"load average {serving_load.load_average()}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
