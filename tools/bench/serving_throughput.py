#!/usr/bin/env python3
"""Serving throughput and latency, SmolLM2-135M-Instruct in float32, same machine, same run, same
prompts: Flotilla's gateway, llama.cpp's llama-server (8 slots, F32 GGUF), transformers' continuous
batching (in process), and transformers `generate` one request at a time.

    nice -n 10 python tools/bench/serving_throughput.py \
        --flotilla-url http://127.0.0.1:7705/v1 --model smollm2 \
        --llama-server /work/llama-build/build/bin/llama-server --gguf /work/bench-data/smollm2-f32.gguf \
        [--flotilla-bin build/bin/flotilla --flotilla-serve FOLDER]   # or let the script bring a mesh up
        [--concurrency 1,8,32 --requests 4,8,32 --request-rate inf --output-tokens 64 --json out.json]

Every request is a 128-token prompt (whole words of SmolLM2's tokenizer, chosen by --seed) and
asks for exactly 64 output tokens (greedy, or with `--top-p P` a seeded draw at temperature 1;
`ignore_eos`, fixed `max_tokens`), streamed with `stream_options.include_usage`. Arrivals are
open-loop (Poisson at --request-rate, or all at once), bounded by --max-concurrency = the row's
concurrency, by the request count and by --time-limit.
The metrics are `vllm bench serve`'s (serving_load.py has the definitions).

transformers' rows run in a subprocess with the same thread count: continuous batching through
`init_continuous_batching` (requests added at the same arrival times, per-token timestamps from
`record_timestamps`, so TTFT/ITL are comparable), and `generate` with a streamer that timestamps
each token (concurrency 1 only: it serves one request at a time by definition).

The machine is shared with compilers: the load average is printed beside the table; compare rows of
the same run only.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_load  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
CHECKPOINT_ROOT = REPOSITORY / "tests" / "fixtures" / "generated" / "models" / "smollm2"
COLUMNS = [("req/s", "request_throughput", 2), ("out tok/s", "output_throughput", 1),
           ("total tok/s", "total_token_throughput", 1)]
for _label in ("ttft", "tpot", "itl", "e2el"):
    for _statistic in ("mean", "median", "p99"):
        COLUMNS.append((f"{_label.upper()} {_statistic}", f"{_statistic}_{_label}_ms", 1))


# ---------------------------------------------------------------------------------------------- transformers


def transformers_child(spec: dict) -> None:
    """Runs in a fresh process: loads the checkpoint once and runs every concurrency level of one
    transformers contender; prints one JSON line per level with the per-request records."""
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()
    output_tokens = spec["output_tokens"]
    for level in spec["levels"]:
        prompts = level["prompt_ids"]
        offsets = serving_load.arrival_offsets(len(prompts), level["request_rate"], spec["seed"])
        # no_grad, not inference_mode: the manager's thread updates its static tensors in place
        # outside the mode, which inference tensors forbid.
        with torch.no_grad():
            if spec["contender"] == "transformers-cb":
                records, duration = continuous_batching_run(model, prompts, offsets, level["max_concurrency"],
                                                            output_tokens, spec["time_limit"], spec)
            else:
                records, duration = generate_run(model, prompts, offsets, output_tokens, spec["time_limit"],
                                                 spec["warmup_prompt_ids"])
        print(json.dumps({"max_concurrency": level["max_concurrency"], "duration": duration,
                          "records": [record.to_json() for record in records]}), flush=True)


def continuous_batching_run(model, prompts, offsets, max_concurrency, output_tokens, time_limit, spec):
    """The open loop of serving_load.run_open_loop, driving a ContinuousBatchingManager in process."""
    import transformers
    from transformers.generation.continuous_batching.utils import WorkloadHints

    config_arguments = {key: value for key, value in (("page_size", spec["cb_page_size"]),
                                                      ("max_batch_tokens", spec["cb_max_batch_tokens"]))
                        if value}
    blocks_per_request = math.ceil((len(prompts[0]) + output_tokens + 1) / (spec["cb_page_size"] or 256))
    # Sized for the workload, as generate_batch's WorkloadHints do; on CPU the automatic size
    # would take most of the machine's free memory.
    config_arguments["num_blocks"] = blocks_per_request * (max_concurrency + 1) + 4
    hints = WorkloadHints(max_prompt_length=max(map(len, prompts)), max_generated_length=output_tokens,
                          num_requests=len(prompts))
    generation_config = transformers.GenerationConfig(max_new_tokens=output_tokens, do_sample=False,
                                                      eos_token_id=-1)
    with model.continuous_batching_context_manager(
            generation_config=generation_config, block=True, timeout=30, workload_hints=hints,
            continuous_batching_config=transformers.ContinuousBatchingConfig(**config_arguments)) as manager:
        # One short request first, so one-time set-up is not counted in the first row.
        if manager.add_request(prompts[0], request_id="warmup", max_new_tokens=4, eos_token_id=-1) is None:
            raise RuntimeError("transformers-cb: the manager refused the warm-up request")
        warmup_deadline = time.perf_counter() + 300
        while (result := manager.get_result(timeout=1)) is None or not result.is_finished():
            if not manager.is_running() or time.perf_counter() > warmup_deadline:
                raise RuntimeError("transformers-cb: the manager stopped (or took 300 s) during the warm-up request")
        pending = collections.deque(zip(offsets, prompts))
        in_flight: dict[str, serving_load.RequestRecord] = {}
        records = []
        start = time.perf_counter()
        deadline = start + time_limit
        counter = 0
        while pending or in_flight:
            now = time.perf_counter()
            if now > deadline:
                pending.clear()
            while pending and len(in_flight) < max_concurrency and start + pending[0][0] <= now:
                _, prompt = pending.popleft()
                record = serving_load.RequestRecord(send_time=time.perf_counter(), prompt_tokens=len(prompt))
                request_id = f"request_{counter}"
                counter += 1
                records.append(record)
                if manager.add_request(prompt, request_id=request_id, max_new_tokens=output_tokens,
                                       record_timestamps=True, eos_token_id=-1) is None:
                    record.error = "the manager refused the request"
                    continue
                in_flight[request_id] = record
            wait = 0.05
            if pending and len(in_flight) < max_concurrency:
                wait = max(0.0005, min(wait, start + pending[0][0] - time.perf_counter()))
            if not in_flight:
                time.sleep(wait)
                continue
            result = manager.get_result(timeout=wait)
            if result is None or not result.is_finished() or result.request_id not in in_flight:
                if now > deadline + time_limit or not manager.is_running():
                    for record in in_flight.values():
                        record.error = "cancelled at the time limit"
                    break
                continue
            record = in_flight.pop(result.request_id)
            record.chunk_times = list(result.timestamps or [])
            record.output_tokens = len(result.generated_tokens)
            record.error = result.error
        finished = [record.chunk_times[-1] for record in records if record.chunk_times]
        duration = (max(finished) if finished else time.perf_counter()) - start
    return records, duration


def generate_run(model, prompts, offsets, output_tokens, time_limit, warmup_prompt_ids):
    """One request at a time with model.generate; a streamer timestamps each new token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class TimingStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.calls = 0

        def put(self, value) -> None:
            # generate() first puts the prompt, then one tensor per new token.
            self.calls += 1
            if self.calls > 1:
                self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    warmup = torch.tensor([warmup_prompt_ids])
    model.generate(warmup, attention_mask=torch.ones_like(warmup), max_new_tokens=4, do_sample=False)
    records = []
    start = time.perf_counter()
    for offset, prompt in zip(offsets, prompts):
        time.sleep(max(0.0, start + offset - time.perf_counter()))
        if time.perf_counter() > start + time_limit:
            break
        streamer = TimingStreamer()
        record = serving_load.RequestRecord(send_time=time.perf_counter(), prompt_tokens=len(prompt))
        input_ids = torch.tensor([prompt])
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=output_tokens,
                                min_new_tokens=output_tokens, do_sample=False, streamer=streamer)
        record.chunk_times = streamer.times
        record.output_tokens = output.shape[1] - input_ids.shape[1]
        records.append(record)
    finished = [record.chunk_times[-1] for record in records if record.chunk_times]
    return records, (max(finished) if finished else time.perf_counter()) - start


def run_transformers(contender: str, options, levels: list[dict], checkpoint: Path) -> list[dict]:
    spec = {"contender": contender, "checkpoint": str(checkpoint), "threads": options.threads,
            "output_tokens": options.output_tokens, "seed": options.seed, "time_limit": options.time_limit,
            "cb_page_size": options.cb_page_size, "cb_max_batch_tokens": options.cb_max_batch_tokens,
            "warmup_prompt_ids": levels[0]["warmup_prompt_ids"], "levels": levels}
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec_file:
        json.dump(spec, spec_file)
    try:
        completed = subprocess.run([sys.executable, __file__, "--transformers-child", spec_file.name],
                                   capture_output=True, text=True, env=environment,
                                   timeout=options.time_limit * 2 * len(levels) + 300)
    finally:
        os.unlink(spec_file.name)
    if completed.returncode != 0:
        raise RuntimeError(f"{contender}: child exited with {completed.returncode}: {completed.stderr[-2000:]}")
    results = []
    for line in completed.stdout.splitlines():
        if line.startswith("{"):
            value = json.loads(line)
            records = [serving_load.RequestRecord.from_json(record) for record in value["records"]]
            results.append({"max_concurrency": value["max_concurrency"], "records": records,
                            "duration": value["duration"]})
    return results


# ---------------------------------------------------------------------------------------------- HTTP contenders


def run_http(name: str, base_url: str, model: str, options, levels: list[dict]) -> list[dict]:
    chat = options.endpoint == "chat"
    url = base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
    serving_load.require_loopback(url)
    results = []
    # One short request first: lazy initialisation is not what the rows measure.
    warmup = serving_load.completion_payload(model, levels[0]["warmup_prompt"], 4, chat)
    record = serving_load.RequestRecord(send_time=0.0)
    asyncio.run(serving_load.stream_request(url, warmup, chat, record, 300))
    if record.error:
        raise RuntimeError(f"{name}: warm-up request to {url} failed: {record.error}")
    for level in levels:
        payloads = [serving_load.completion_payload(model, prompt, options.output_tokens, chat, options.top_p,
                                                    options.seed + index)
                    for index, prompt in enumerate(level["prompts"])]
        records, duration = asyncio.run(serving_load.run_open_loop(
            url, payloads, chat, level["request_rate"], level["max_concurrency"], options.time_limit, options.seed))
        results.append({"max_concurrency": level["max_concurrency"], "records": records, "duration": duration})
    return results


async def _scrape(urls: list[str], metric: str) -> tuple[float, float] | None:
    """(sum, count) of a Prometheus histogram over all `urls`; None when any is missing it."""
    total_sum, total_count = 0.0, 0.0
    for url in urls:
        status, body = await serving_load.http_request(url, timeout=10)
        text = body.decode(errors="replace")
        value_sum = serving_load.prometheus_sample(text, metric + "_sum")
        value_count = serving_load.prometheus_sample(text, metric + "_count")
        if status != 200 or value_sum is None or value_count is None:
            return None
        total_sum += value_sum
        total_count += value_count
    return total_sum, total_count


def run_flotilla(base_url: str, model: str, options, levels: list[dict], metrics_urls: list[str]) -> list[dict]:
    """Flotilla's rows, and where the worker's step-duration histogram is reachable, the mesh's
    overhead per token: at concurrency 1 every decode step serves the one request, so mean ITL −
    mean step duration is what the gateway, the gRPC stream and HTTP add to each token."""
    results = []
    for level in levels:
        before = asyncio.run(_scrape(metrics_urls, options.step_metric)) if metrics_urls else None
        result = run_http("flotilla", base_url, model, options, [level])[0]
        after = asyncio.run(_scrape(metrics_urls, options.step_metric)) if metrics_urls else None
        if before and after and after[1] > before[1]:
            result["mean_step_ms"] = 1000.0 * (after[0] - before[0]) / (after[1] - before[1])
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------- report


def print_table(rows: list[dict], load_averages: dict, options) -> None:
    print(f"\nSmolLM2-135M-Instruct float32, {options.prompt_tokens}-token prompts, {options.output_tokens} output "
          f"tokens, {options.threads} threads, request rate {options.request_rate}, endpoint /v1/"
          f"{'chat/completions' if options.endpoint == 'chat' else 'completions'}; times in ms")
    header = ["contender", "conc", "ok/fail"] + [label for label, _, _ in COLUMNS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        metrics = row["metrics"]
        cells = [row["contender"], str(row["max_concurrency"]), f"{metrics['completed']}/{metrics['failed']}"]
        for _, key, digits in COLUMNS:
            value = metrics.get(key, float("nan"))
            cells.append("-" if value != value else f"{value:.{digits}f}")
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        if "first_error" in row["metrics"]:
            print(f"{row['contender']} at {row['max_concurrency']}: first error: {row['metrics']['first_error']}")
        if "mean_step_ms" in row:
            overhead = row["metrics"]["mean_itl_ms"] - row["mean_step_ms"]
            print(f"{row['contender']} at {row['max_concurrency']}: worker mean step {row['mean_step_ms']:.2f} ms, "
                  f"client mean ITL {row['metrics']['mean_itl_ms']:.2f} ms, mesh overhead ≈ {overhead:.2f} ms/token")
    print("load average (1, 5, 15 min) before → after each contender:")
    for contender, (before, after) in load_averages.items():
        print(f"  {contender}: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f} → {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


def parse_list(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--transformers-child":
        transformers_child(json.loads(Path(sys.argv[2]).read_text()))
        return
    # SIGTERM (timeout, kill) leaves through the `with` blocks, so a llama-server or mesh we started stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--contenders", default="flotilla,llama-server,transformers-cb,transformers-generate",
                           help="comma-separated; those without their flags (URL, binary) are skipped")
    arguments.add_argument("--checkpoint", type=Path, help="float32 SmolLM2 folder (default: make_smollm2.py's)")
    arguments.add_argument("--concurrency", type=parse_list, default=[1, 8, 32])
    arguments.add_argument("--requests", type=parse_list, default=[4, 8, 32], help="one count per concurrency")
    arguments.add_argument("--request-rate", type=float, default=math.inf, help="requests/s (Poisson); inf = all at once")
    arguments.add_argument("--prompt-tokens", type=int, default=128)
    arguments.add_argument("--output-tokens", type=int, default=64)
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--top-p", type=float, help="sample at temperature 1 from this nucleus instead of greedy "
                                                     "(the HTTP contenders: flotilla, llama-server)")
    arguments.add_argument("--threads", type=int, default=os.cpu_count())
    arguments.add_argument("--time-limit", type=float, default=300.0, help="seconds per row before no new request starts")
    arguments.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    arguments.add_argument("--json", type=Path, help="also write every row's metrics here")
    arguments.add_argument("--flotilla-url", help="a running gateway's OpenAI base URL, http://127.0.0.1:PORT/v1")
    arguments.add_argument("--model", default="smollm2", help="the model name the gateway serves")
    arguments.add_argument("--flotilla-bin", type=Path, help="with --flotilla-serve: bring a mesh up and down")
    arguments.add_argument("--flotilla-serve", type=Path, help="model folder or reference for `flotilla up --serve`")
    arguments.add_argument("--flotilla-kernels", default="",
                           help="`flotilla serve --kernels` mapping for the mesh --flotilla-serve brings up (default: the "
                                "worker's); e.g. RMSNorm=eager,SiluAndMul=eager,RotaryEmbedding=eager,PagedAttention=eager")
    arguments.add_argument("--worker-metrics-url", action="append", default=[],
                           help="a worker's /metrics, for the overhead per token (found by itself with --flotilla-bin)")
    arguments.add_argument("--step-metric", default="flotilla_step_duration_seconds",
                           help="the worker's step-duration histogram")
    arguments.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server binary")
    arguments.add_argument("--gguf", type=Path, help="the F32 GGUF of the same weights")
    arguments.add_argument("--llama-parallel", type=int, default=8)
    arguments.add_argument("--cb-page-size", type=int, default=0, help="transformers CB page size (0: its default)")
    arguments.add_argument("--cb-max-batch-tokens", type=int, default=0, help="transformers CB token budget (0: its default)")
    options = arguments.parse_args()
    if len(options.requests) != len(options.concurrency):
        arguments.error("--requests needs one count per --concurrency value")

    checkpoint = options.checkpoint
    if checkpoint is None:
        subprocess.run([sys.executable, str(REPOSITORY / "tests" / "fixtures" / "models" / "make_smollm2.py"),
                        str(CHECKPOINT_ROOT)], check=True, stdout=subprocess.DEVNULL)
        checkpoint = CHECKPOINT_ROOT / "checkpoint"
    tokenizer_json = checkpoint / "tokenizer.json"
    # Every row gets its own prompts, and the warm-up request yet another one: a prompt seen before
    # would be a prefix-cache hit (llama-server keeps each slot's last prompt) and shorten its TTFT.
    warmup_prompt = serving_load.build_prompts(tokenizer_json, 1, options.prompt_tokens, options.seed)[0]
    levels = []
    for index, (concurrency, count) in enumerate(zip(options.concurrency, options.requests)):
        prompts = serving_load.build_prompts(tokenizer_json, count, options.prompt_tokens,
                                             options.seed + 7919 * (index + 1))
        levels.append({"max_concurrency": concurrency, "request_rate": options.request_rate, "prompts": prompts,
                       "prompt_ids": serving_load.encode_prompts(tokenizer_json, prompts),
                       "warmup_prompt": warmup_prompt,
                       "warmup_prompt_ids": serving_load.encode_prompts(tokenizer_json, [warmup_prompt])[0]})

    contenders = [name for name in options.contenders.split(",") if name]
    if options.top_p is not None and any(name.startswith("transformers") for name in contenders):
        arguments.error("--top-p: only the HTTP contenders (flotilla, llama-server) take sampling options")
    rows, load_averages = [], {}
    work_directory = Path(tempfile.mkdtemp(prefix="flotilla-serving-bench-"))
    for contender in contenders:
        before = serving_load.load_average()
        if contender == "flotilla":
            if options.flotilla_url:
                results = run_flotilla(options.flotilla_url, options.model, options, levels, options.worker_metrics_url)
            elif options.flotilla_bin and options.flotilla_serve:
                with serving_load.FlotillaMesh(options.flotilla_bin, options.flotilla_serve, options.model,
                                               work_directory / "mesh", work_directory / "flotilla-up.log",
                                               kernels=options.flotilla_kernels) as mesh:
                    results = run_flotilla(mesh.base_url, options.model, options, levels,
                                           options.worker_metrics_url or mesh.worker_metrics_urls)
            else:
                print("flotilla: skipped (no --flotilla-url, nor --flotilla-bin with --flotilla-serve)", file=sys.stderr)
                continue
        elif contender == "llama-server":
            if not (options.llama_server and options.gguf):
                print("llama-server: skipped (no --llama-server and --gguf)", file=sys.stderr)
                continue
            context = options.llama_parallel * (options.prompt_tokens + options.output_tokens + 64)
            with serving_load.LlamaServer(options.llama_server, options.gguf, options.llama_parallel, context,
                                          options.threads, work_directory / "llama-server.log") as server:
                results = run_http(contender, server.base_url, options.model, options, levels)
        elif contender == "transformers-cb":
            spec_levels = [{key: level[key] for key in ("max_concurrency", "request_rate", "prompt_ids",
                                                        "warmup_prompt_ids")} for level in levels]
            results = run_transformers(contender, options, spec_levels, checkpoint)
        elif contender == "transformers-generate":
            # One request at a time by definition: only the concurrency-1 row means anything.
            spec_levels = [{key: level[key] for key in ("max_concurrency", "request_rate", "prompt_ids",
                                                        "warmup_prompt_ids")}
                           for level in levels if level["max_concurrency"] == 1]
            results = run_transformers(contender, options, spec_levels, checkpoint) if spec_levels else []
        else:
            arguments.error(f"unknown contender {contender}")
        load_averages[contender] = (before, serving_load.load_average())
        for result in results:
            row = {"contender": contender, "max_concurrency": result["max_concurrency"],
                   "metrics": serving_load.summarize(result["records"], result["duration"], options.output_tokens)}
            if "mean_step_ms" in result:
                row["mean_step_ms"] = result["mean_step_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, load_averages, options)
    if options.json:
        options.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
                                            "load_averages": load_averages, "rows": rows,
                                            "options": {key: str(value) for key, value in vars(options).items()}},
                                           indent=2))


if __name__ == "__main__":
    main()
