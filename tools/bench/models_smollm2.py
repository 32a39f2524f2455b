#!/usr/bin/env python3
"""SmolLM2-135M-Instruct on CPU: Flotilla vs transformers (eager and sdpa) and, when given, llama.cpp's
llama-bench on the same model as an F32 GGUF; same machine, same run, same thread count.

    python tools/bench/models_smollm2.py [--threads N] [--build-dir build] [--rounds 3]
        [--llama-bench PATH --gguf SMOLLM2-F32.gguf] [--checkpoint FOLDER] [--skip-transformers]

Reports load time, prefill tokens/s (--prompt-length, default 128), decode tokens/s at batch 1 and
8 (--decode-steps, default 64; Flotilla's batch 1 also on the serving path, a worker's paged cache
and paged attention), peak RSS after load, a memory-bandwidth copy benchmark and the batch-1 decode
bound (bandwidth / weight bytes), plus the read-bandwidth probe models_bench runs in the same process
(2 intra-op threads summing a 1 GiB buffer on 2 MiB pages with AVX-512: what batch-1 decode can at
best stream). The machine is shared, so the contenders run interleaved for --rounds rounds (Flotilla
float32 with --kernels, Flotilla bfloat16, llama.cpp, transformers), each round printing the load
average; each Flotilla and llama.cpp run starts with its weight files evicted from the page cache
(a cold start: each maps them with its own policy); the final table gives each contender's median
and range over the rounds. Flotilla float32 and llama.cpp run back to back, the one first in even
rounds second in odd ones: this VM's memory bandwidth drifts over tens of seconds, and each round's
Flotilla / llama.cpp ratio should compare two runs taken under the same bandwidth (the first of
the pair tends to be the slower: use an even --rounds). llama.cpp is optional (skipped without --llama-bench, or when the path
does not exist); this script never builds it. The checkpoint is the one tests/fixtures/models/make_smollm2.py converts (once), or
--checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
CHECKPOINT_ROOT = REPOSITORY / "tests" / "fixtures" / "generated" / "models" / "smollm2"


def copy_bandwidth(torch, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read + write), best of `repeats`."""
    source = torch.ones(megabytes * 1024 * 1024 // 4)
    destination = torch.empty_like(source)
    destination.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        destination.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best


def transformers_numbers(checkpoint: Path, implementation: str, threads: int, prompt_length: int, steps: int) -> dict:
    """Runs in a fresh process so its load time and RSS are its own."""
    code = f"""
import json, time, torch, transformers
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
torch.set_num_threads({threads})
start = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, attn_implementation={implementation!r},
                                                          dtype=torch.float32).eval()
load = time.perf_counter() - start
rss = peak_rss()
result = {{"load_seconds": load, "peak_rss_after_load_bytes": rss}}
with torch.inference_mode():
    ids = torch.randint(3, 1000, (1, {prompt_length}))
    model(ids, logits_to_keep=1)
    start = time.perf_counter(); model(ids, logits_to_keep=1)
    result["prefill_tokens_per_second"] = {prompt_length} / (time.perf_counter() - start)
    for batch in (1, 8):
        prompt = torch.randint(3, 1000, (batch, 16))
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        prefill = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, do_sample=False)
        prefill_time = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens={steps} + 1,
                       min_new_tokens={steps} + 1, do_sample=False)
        total = time.perf_counter() - start
        result[f"decode_batch{{batch}}_tokens_per_second"] = batch * {steps} / max(total - prefill_time, 1e-9)
result["peak_rss_end_bytes"] = peak_rss()
print(json.dumps(result))
"""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drops each file's clean pages from the page cache, so the next process maps it as a cold start
    does: its own page faults read the file, with its own mapping policy (Flotilla asks for 2 MiB
    pages, Note [Weights on huge pages]; llama.cpp maps 4 KiB pages). Without this each contender
    inherits whatever page-cache folios the last writer or reader left, which moves decode rates
    by 5-15% on this machine."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def flotilla_numbers(build_dir: Path, checkpoint: Path, threads: int, prompt_length: int, steps: int,
                     kernels: str = "", dtype: str = "float32") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    evict_from_page_cache(sorted(checkpoint.glob("*.safetensors")))
    output = subprocess.run([str(build_dir / "bin" / "models_bench"), str(checkpoint), "--threads", str(threads),
                             "--prompt-length", str(prompt_length), "--decode-steps", str(steps), "--kernels", kernels,
                             "--dtype", dtype],
                            capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def llama_cpp_numbers(llama_bench: Path, gguf: Path, threads: int, prompt_length: int, steps: int) -> dict:
    """llama-bench's own prefill (pp) and batch-1 generation (tg) rates, one repetition per round."""
    evict_from_page_cache([gguf])
    output = subprocess.run([str(llama_bench), "-m", str(gguf), "-t", str(threads), "-p", str(prompt_length),
                             "-n", str(steps), "-r", "1", "-o", "json"], capture_output=True, text=True,
                            check=True).stdout
    result = {}
    for row in json.loads(output):
        if row["n_prompt"] > 0 and row["n_gen"] == 0:
            result["prefill_tokens_per_second"] = row["avg_ts"]
        elif row["n_gen"] > 0 and row["n_prompt"] == 0:
            result["decode_batch1_tokens_per_second"] = row["avg_ts"]
    return result


# The worker's default --kernels (services/worker/worker_main.cc).
DEFAULT_KERNELS = "RMSNorm=builtin,SiluAndMul=builtin,RotaryEmbedding=builtin,PagedAttention=builtin,Linear=builtin"
EAGER_KERNELS = "RMSNorm=eager,SiluAndMul=eager,RotaryEmbedding=eager,PagedAttention=eager,Linear=eager"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--threads", type=int, default=2)
    arguments.add_argument("--build-dir", type=Path, default=Path(os.environ.get("FLOTILLA_BUILD_DIR",
                                                                                 REPOSITORY / "build")))
    arguments.add_argument("--prompt-length", type=int, default=128)
    arguments.add_argument("--decode-steps", type=int, default=64)
    arguments.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every contender")
    arguments.add_argument("--kernels", default=DEFAULT_KERNELS,
                           help="Flotilla's kernel mapping (models/kernelize.h; default: the worker's, every builtin "
                                "kernel); the flotilla_eager column always runs with every layer eager")
    arguments.add_argument("--checkpoint", type=Path, help="a float32 SmolLM2 safetensors folder (default: the "
                                                           "tests' fixture, converted once)")
    arguments.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench binary (optional contender)")
    arguments.add_argument("--gguf", type=Path, help="the same model as an F32 GGUF, for --llama-bench")
    arguments.add_argument("--skip-transformers", action="store_true")
    options = arguments.parse_args()
    if options.checkpoint:
        checkpoint = options.checkpoint
    else:
        subprocess.run([sys.executable, str(REPOSITORY / "tests" / "fixtures" / "models" / "make_smollm2.py"),
                        str(CHECKPOINT_ROOT)], check=True, stdout=subprocess.DEVNULL)
        checkpoint = CHECKPOINT_ROOT / "checkpoint"
    with_llama = bool(options.llama_bench and options.gguf and options.llama_bench.exists() and options.gguf.exists())
    if options.llama_bench and not with_llama:
        print(f"llama.cpp skipped: {options.llama_bench} or {options.gguf} does not exist", file=sys.stderr)

    import torch

    torch.set_num_threads(options.threads)
    contenders = {"flotilla": lambda: flotilla_numbers(options.build_dir, checkpoint, options.threads,
                                                       options.prompt_length, options.decode_steps, options.kernels),
                  "flotilla_bf16": lambda: flotilla_numbers(options.build_dir, checkpoint, options.threads,
                                                            options.prompt_length, options.decode_steps,
                                                            options.kernels, "bfloat16"),
                  "flotilla_eager": lambda: flotilla_numbers(options.build_dir, checkpoint, options.threads,
                                                             options.prompt_length, options.decode_steps,
                                                             EAGER_KERNELS)}
    if with_llama:
        contenders["llama_cpp"] = lambda: llama_cpp_numbers(options.llama_bench, options.gguf, options.threads,
                                                            options.prompt_length, options.decode_steps)
    if not options.skip_transformers:
        for implementation in ("eager", "sdpa"):
            contenders[f"transformers_{implementation}"] = (
                lambda implementation=implementation: transformers_numbers(
                    checkpoint, implementation, options.threads, options.prompt_length, options.decode_steps))
    rounds: list[dict] = []
    for round_index in range(options.rounds):
        measured = {"load_average_before": load_average()}
        # The compared pair back to back, in alternating order (see the docstring); the rest after.
        pair = [name for name in ("flotilla", "llama_cpp") if name in contenders]
        if round_index % 2 == 1:
            pair.reverse()
        for name in pair + [name for name in contenders if name not in pair]:
            measured[name] = contenders[name]()
        # Last in the round, away from the pair: with the copy first (2026-12-07 18:2x), the pair's
        # first run decoded slower in all 7 rounds (Flotilla / llama.cpp 0.81-0.89 with Flotilla
        # first, 0.98-1.30 with llama.cpp first); with it last, 0.85-1.07 and 1.01-1.36: weaker, not
        # gone, so the order alternates and an even --rounds weighs both orders alike.
        measured["copy_bandwidth_bytes_per_second"] = copy_bandwidth(torch)
        measured["load_average_after"] = load_average()
        rounds.append(measured)
        print(f"round {round_index + 1}: load average {measured['load_average_before']} -> "
              f"{measured['load_average_after']}: " + ", ".join(
                  f"{name} decode {measured[name].get('decode_batch1_tokens_per_second', 0):.1f}"
                  + (f" (paged {measured[name]['paged_decode_batch1_tokens_per_second']:.1f})"
                     if "paged_decode_batch1_tokens_per_second" in measured[name] else "") + " / prefill "
                  f"{measured[name].get('prefill_tokens_per_second', 0):.0f}" for name in contenders), flush=True)
    report = {"threads": options.threads, "kernels": options.kernels, "rounds": rounds,
              "weight_bytes": rounds[0]["flotilla"]["weight_bytes"]}
    print(json.dumps(report, indent=2))
    print_table(report, list(contenders))


def print_table(report: dict, contenders: list[str]) -> None:
    """One row per measurement, one column per contender: the median over the rounds [min-max]."""
    rounds = report["rounds"]
    weight_mb = report["weight_bytes"] / 1e6
    reads = [r["flotilla"]["read_bandwidth_bytes_per_second"] for r in rounds]
    copies = [r["copy_bandwidth_bytes_per_second"] for r in rounds]
    print(f"\nSmolLM2-135M, {report['threads']} threads, {len(rounds)} interleaved rounds; float32 weights "
          f"{weight_mb:.0f} MB; read probe {median(reads) / 1e9:.1f} GB/s [{min(reads) / 1e9:.1f}-"
          f"{max(reads) / 1e9:.1f}] = batch-1 bound {median(reads) / report['weight_bytes']:.0f} tokens/s; copy "
          f"{median(copies) / 1e9:.1f} GB/s; Flotilla kernels {report['kernels']}; load averages "
          + ", ".join(f"{r['load_average_before']} -> {r['load_average_after']}" for r in rounds))
    rows = [("prefill tokens/s", "prefill_tokens_per_second"),
            ("decode batch 1 tokens/s", "decode_batch1_tokens_per_second"),
            ("decode batch 1, serving path (paged) tokens/s", "paged_decode_batch1_tokens_per_second"),
            ("decode batch 8 tokens/s", "decode_batch8_tokens_per_second"),
            ("load seconds", "load_seconds"),
            ("RSS after load MB", "peak_rss_after_load_bytes")]
    print("| measurement | " + " | ".join(contenders) + " |")
    print("| --- |" + " ---: |" * len(contenders))
    for label, key in rows:
        cells = []
        for name in contenders:
            values = [r[name][key] * (1e-6 if key.endswith("bytes") else 1.0) for r in rounds if key in r[name]]
            cells.append(f"{median(values):.1f} [{min(values):.1f}-{max(values):.1f}]" if values else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if "llama_cpp" in contenders:
        for key, label in (("decode_batch1_tokens_per_second", "decode batch 1"),
                           ("paged_decode_batch1_tokens_per_second", "decode batch 1 on the serving path"),
                           ("prefill_tokens_per_second", "prefill")):
            llama_key = key.removeprefix("paged_")
            ratios = [r["flotilla"][key] / r["llama_cpp"][llama_key] for r in rounds if key in r["flotilla"]]
            if not ratios:
                continue
            print(f"Flotilla float32 / llama.cpp F32, {label}, per round: "
                  + ", ".join(f"{ratio:.2f}x" for ratio in ratios) + f" (median {median(ratios):.2f}x)")


if __name__ == "__main__":
    main()
