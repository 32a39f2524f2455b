#!/usr/bin/env python3
"""Prefix caching: time to first token of requests that share a 1,000-token system prompt, cold
(every request has its own system prompt, so nothing can be reused) against warm (the same system
prompt as a request served just before), on Flotilla's gateway and on llama.cpp's llama-server.

    nice -n 10 python tools/bench/serving_prefix_cache.py \
        --flotilla-url http://127.0.0.1:7705/v1 --model smollm2 \
        --llama-server /work/llama-build/build/bin/llama-server --gguf /work/bench-data/smollm2-f32.gguf \
        [--requests 4 --system-tokens 1000 --user-tokens 24 --endpoint chat|completions --json out.json]

Requests run one at a time (concurrency 1), greedy, 2 output tokens (`ignore_eos`), streamed, so
TTFT is the prefill of what the cache does not hold. The warm phase sends one unmeasured request
first to fill the cache. The issue's target: a hit cuts TTFT by at least 5x.
Prompts are whole one-token words of SmolLM2's tokenizer chosen by --seed (serving_load.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_load  # noqa: E402
from serving_throughput import CHECKPOINT_ROOT, REPOSITORY  # noqa: E402

OUTPUT_TOKENS = 2


def payload(model: str, system: str, user: str, chat: bool) -> dict:
    if chat:
        request = serving_load.completion_payload(model, user, OUTPUT_TOKENS, chat=True)
        request["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return request
    return serving_load.completion_payload(model, system + user, OUTPUT_TOKENS, chat=False)


async def measure(url: str, model: str, options, tokenizer_json: Path) -> dict:
    """Median TTFT of the cold and the warm phase, in ms, and their ratio."""
    chat = options.endpoint == "chat"
    cold_systems = [serving_load.build_prompts(tokenizer_json, 1, options.system_tokens, options.seed + 1000 + index)[0]
                    for index in range(options.requests)]
    shared_system = serving_load.build_prompts(tokenizer_json, 1, options.system_tokens, options.seed)[0]
    users = serving_load.build_prompts(tokenizer_json, options.requests + 1, options.user_tokens, options.seed + 1)

    async def one(system: str, user: str) -> serving_load.RequestRecord:
        record = serving_load.RequestRecord(send_time=0.0)
        await serving_load.stream_request(url, payload(model, system, user, chat), chat, record, 300)
        if record.error:
            raise RuntimeError(f"prefix cache request to {url} failed: {record.error}")
        return record

    warmup_system = serving_load.build_prompts(tokenizer_json, 1, 64, options.seed + 999)[0]
    await one(warmup_system, users[-1])  # warm-up: short and sharing no prefix with what follows
    cold = [await one(system, user) for system, user in zip(cold_systems, users)]
    await one(shared_system, users[-1])  # fills the cache with the shared system prompt
    warm = [await one(shared_system, user) for user in users[:-1]]
    cold_ms = [1000 * (record.chunk_times[0] - record.send_time) for record in cold]
    warm_ms = [1000 * (record.chunk_times[0] - record.send_time) for record in warm]
    return {"prompt_tokens": cold[0].prompt_tokens, "cold_ttft_ms": cold_ms, "warm_ttft_ms": warm_ms,
            "median_cold_ttft_ms": statistics.median(cold_ms), "median_warm_ttft_ms": statistics.median(warm_ms),
            "speedup": statistics.median(cold_ms) / statistics.median(warm_ms)}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started on the way out
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--checkpoint", type=Path, help="SmolLM2 folder with tokenizer.json (default: make_smollm2.py's)")
    arguments.add_argument("--requests", type=int, default=4, help="measured requests per phase")
    arguments.add_argument("--system-tokens", type=int, default=1000)
    arguments.add_argument("--user-tokens", type=int, default=24)
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--threads", type=int, default=os.cpu_count())
    arguments.add_argument("--endpoint", choices=["completions", "chat"], default="chat")
    arguments.add_argument("--json", type=Path)
    arguments.add_argument("--flotilla-url", help="a running gateway's OpenAI base URL")
    arguments.add_argument("--model", default="smollm2")
    arguments.add_argument("--flotilla-bin", type=Path, help="with --flotilla-serve: bring a mesh up and down")
    arguments.add_argument("--flotilla-serve", type=Path)
    arguments.add_argument("--llama-server", type=Path)
    arguments.add_argument("--gguf", type=Path)
    arguments.add_argument("--llama-parallel", type=int, default=8)
    options = arguments.parse_args()

    checkpoint = options.checkpoint
    if checkpoint is None:
        import subprocess

        subprocess.run([sys.executable, str(REPOSITORY / "tests" / "fixtures" / "models" / "make_smollm2.py"),
                        str(CHECKPOINT_ROOT)], check=True, stdout=subprocess.DEVNULL)
        checkpoint = CHECKPOINT_ROOT / "checkpoint"
    tokenizer_json = checkpoint / "tokenizer.json"
    path = "/chat/completions" if options.endpoint == "chat" else "/completions"
    work_directory = Path(tempfile.mkdtemp(prefix="flotilla-prefix-bench-"))
    results = {}
    if options.flotilla_url:
        results["flotilla"] = asyncio.run(measure(options.flotilla_url.rstrip("/") + path, options.model, options,
                                                  tokenizer_json))
    elif options.flotilla_bin and options.flotilla_serve:
        with serving_load.FlotillaMesh(options.flotilla_bin, options.flotilla_serve, options.model,
                                       work_directory / "mesh", work_directory / "flotilla-up.log") as mesh:
            results["flotilla"] = asyncio.run(measure(mesh.base_url + path, options.model, options, tokenizer_json))
    if options.llama_server and options.gguf:
        context = options.llama_parallel * (options.system_tokens + options.user_tokens + 128)
        with serving_load.LlamaServer(options.llama_server, options.gguf, options.llama_parallel, context,
                                      options.threads, work_directory / "llama-server.log") as server:
            results["llama-server"] = asyncio.run(measure(server.base_url + path, options.model, options,
                                                          tokenizer_json))
    if not results:
        arguments.error("nothing to measure: give --flotilla-url (or --flotilla-bin and --flotilla-serve) "
                        "and/or --llama-server with --gguf")
    print(f"\nPrefix cache: {options.system_tokens}-token shared system prompt + {options.user_tokens}-token user "
          f"message, {options.requests} requests per phase, one at a time, /v1{path}")
    print("| contender | prompt tokens | median TTFT cold ms | median TTFT warm ms | cold / warm |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['prompt_tokens']} | {result['median_cold_ttft_ms']:.1f} | "
              f"{result['median_warm_ttft_ms']:.1f} | {result['speedup']:.1f}x |")
    load = serving_load.load_average()
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if options.json:
        options.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": load,
                                            "results": results}, indent=2))


if __name__ == "__main__":
    main()
