#!/usr/bin/env python3
"""SmolLM2-135M-Instruct in float32 on CPU: Flotilla vs transformers (eager and sdpa), same machine,
same run, same thread count.

    python tools/bench/models_smollm2.py [--threads N] [--build-dir build]

Reports load time, prefill tokens/s (512-token prompt), decode tokens/s at batch 1 and 8, peak RSS
after load, a memory-bandwidth copy benchmark and the batch-1 decode bound (bandwidth / weight
bytes). The checkpoint is the one tests/fixtures/models/make_smollm2.py converts (once).
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


def flotilla_numbers(build_dir: Path, checkpoint: Path, threads: int, prompt_length: int, steps: int,
                     kernels: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    output = subprocess.run([str(build_dir / "bin" / "models_bench"), str(checkpoint), "--threads", str(threads),
                             "--prompt-length", str(prompt_length), "--decode-steps", str(steps), "--kernels", kernels],
                            capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--threads", type=int, default=os.cpu_count())
    arguments.add_argument("--build-dir", type=Path, default=REPOSITORY / "build")
    arguments.add_argument("--prompt-length", type=int, default=512)
    arguments.add_argument("--decode-steps", type=int, default=32)
    arguments.add_argument("--kernels", default="",
                           help="Flotilla's kernel mapping (models/kernelize.h), e.g. "
                                "RMSNorm=builtin,SiluAndMul=builtin,RotaryEmbedding=builtin,Linear=builtin")
    options = arguments.parse_args()
    subprocess.run([sys.executable, str(REPOSITORY / "tests" / "fixtures" / "models" / "make_smollm2.py"),
                    str(CHECKPOINT_ROOT)], check=True, stdout=subprocess.DEVNULL)
    checkpoint = CHECKPOINT_ROOT / "checkpoint"

    import torch

    torch.set_num_threads(options.threads)
    bandwidth = copy_bandwidth(torch)
    report = {"threads": options.threads, "copy_bandwidth_bytes_per_second": bandwidth}
    report["flotilla"] = flotilla_numbers(options.build_dir, checkpoint, options.threads, options.prompt_length,
                                          options.decode_steps, options.kernels)
    report["kernels"] = options.kernels or "(default)"
    for implementation in ("eager", "sdpa"):
        report[f"transformers_{implementation}"] = transformers_numbers(
            checkpoint, implementation, options.threads, options.prompt_length, options.decode_steps)
    weight_bytes = report["flotilla"]["weight_bytes"]
    report["batch1_bound_tokens_per_second"] = bandwidth / weight_bytes
    report["flotilla_batch1_fraction_of_bound"] = (report["flotilla"]["decode_batch1_tokens_per_second"]
                                                   / report["batch1_bound_tokens_per_second"])
    best = max((report[f"transformers_{name}"] for name in ("eager", "sdpa")),
               key=lambda numbers: numbers["decode_batch1_tokens_per_second"])
    report["speedups"] = {
        "load": min(report[f"transformers_{n}"]["load_seconds"] for n in ("eager", "sdpa")) / report["flotilla"]["load_seconds"],
        "decode_batch1_vs_best": report["flotilla"]["decode_batch1_tokens_per_second"] / best["decode_batch1_tokens_per_second"],
        "decode_batch8_vs_best": report["flotilla"]["decode_batch8_tokens_per_second"] / max(
            report[f"transformers_{n}"]["decode_batch8_tokens_per_second"] for n in ("eager", "sdpa")),
        "prefill_vs_best": report["flotilla"]["prefill_tokens_per_second"] / max(
            report[f"transformers_{n}"]["prefill_tokens_per_second"] for n in ("eager", "sdpa")),
        "rss_after_load_over_weights": report["flotilla"]["peak_rss_after_load_bytes"] / weight_bytes,
        "peak_rss_end_over_weights": report["flotilla"]["peak_rss_end_bytes"] / weight_bytes,
    }
    print(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict) -> None:
    """One row per measurement: Flotilla next to transformers eager and sdpa, and Flotilla's ratio
    to the better of the two (higher is better for Flotilla in every row)."""
    flotilla, eager, sdpa = report["flotilla"], report["transformers_eager"], report["transformers_sdpa"]
    print(f"\nSmolLM2-135M float32, {report['threads']} threads; copy bandwidth "
          f"{report['copy_bandwidth_bytes_per_second'] / 1e9:.1f} GB/s, weights {flotilla['weight_bytes'] / 1e6:.0f} MB, "
          f"batch-1 bound {report['batch1_bound_tokens_per_second']:.1f} tokens/s; read bandwidth "
          f"{flotilla['read_bandwidth_bytes_per_second'] / 1e9:.1f} GB/s, batch-1 read bound "
          f"{flotilla['batch1_read_bound_tokens_per_second']:.1f} tokens/s; kernels {report['kernels']}")
    print(f"{'measurement':<30} {'flotilla':>10} {'tf eager':>10} {'tf sdpa':>10} {'flotilla vs best':>17}")
    rows = [("load seconds (lower wins)", "load_seconds", False),
            ("prefill 512 tokens/s", "prefill_tokens_per_second", True),
            ("decode batch 1 tokens/s", "decode_batch1_tokens_per_second", True),
            ("decode batch 8 tokens/s", "decode_batch8_tokens_per_second", True),
            ("RSS after load MB (lower wins)", "peak_rss_after_load_bytes", False)]
    for label, key, higher_is_better in rows:
        scale = 1e-6 if key.endswith("bytes") else 1.0
        ours, theirs = flotilla[key] * scale, (eager[key] * scale, sdpa[key] * scale)
        ratio = ours / max(theirs) if higher_is_better else min(theirs) / ours
        print(f"{label:<30} {ours:>10.2f} {theirs[0]:>10.2f} {theirs[1]:>10.2f} {ratio:>16.2f}x")
    print(f"{'decode batch 1, share of bound':<30} {report['flotilla_batch1_fraction_of_bound']:>10.0%}")


if __name__ == "__main__":
    main()
