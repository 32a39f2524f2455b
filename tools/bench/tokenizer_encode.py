"""Encode throughput: Flotilla's C++ tokenizer vs the Rust `tokenizers` library (Python binding) on
the same generated multilingual corpus and tokenizer.json, one thread and all threads.

    python tools/bench/tokenizer_encode.py [--megabytes 100] [--tokenizer DIR]

Only the encode calls are timed: `Tokenizer.encode` per text for one thread, `encode_batch` for all
threads; Flotilla's side runs build/bin/flotilla-tokenizer-tool bench (Encode per text, EncodeBatch
on its thread pool), which reads the corpus before starting its clock. Both compute character
offsets. Token counts must agree. Default tokenizer: the SmolLM2 fixture (byte-level BPE).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "tests" / "fixtures" / "tokenizer"))


def make_corpus(megabytes: float, seed: int = 0) -> list[str]:
    from corpus import SAMPLES  # noqa: PLC0415

    generator = random.Random(seed)
    words = [word for sample in SAMPLES for word in sample.split() if word]
    texts, total = [], 0
    target = int(megabytes * 1_000_000)
    while total < target:
        count = generator.randint(50, 600)
        text = " ".join(generator.choice(words) for _ in range(count))
        if generator.random() < 0.2:
            text = text.replace(" ", "\n", 5)
        texts.append(text)
        total += len(text.encode())
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--build-dir", type=Path, default=REPOSITORY / "build")
    arguments = parser.parse_args()

    from tokenizers import Tokenizer  # noqa: PLC0415

    if arguments.tokenizer is None:
        import make_tokenizers  # noqa: PLC0415

        arguments.tokenizer = make_tokenizers.main() / "smollm2"
    tool = arguments.build_dir / "bin" / "flotilla-tokenizer-tool"
    texts = make_corpus(arguments.megabytes)
    size = sum(len(text.encode()) for text in texts)
    reference = Tokenizer.from_file(str(arguments.tokenizer / "tokenizer.json"))
    threads = os.cpu_count()
    print(f"corpus: {len(texts)} texts, {size / 1e6:.1f} MB; tokenizer {arguments.tokenizer}; {threads} CPUs")

    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as corpus_file:
        corpus_file.write("\0".join(texts).encode())
    results = {}
    try:
        start = time.perf_counter()
        tokens = sum(len(reference.encode(text).ids) for text in texts)
        results["tokenizers 1 thread"] = (time.perf_counter() - start, tokens)
        start = time.perf_counter()
        tokens = sum(len(encoding.ids) for encoding in reference.encode_batch(texts))
        results["tokenizers all threads"] = (time.perf_counter() - start, tokens)
        for label, count in (("flotilla 1 thread", 1), ("flotilla all threads", threads)):
            output = subprocess.run([str(tool), "bench", str(arguments.tokenizer), corpus_file.name,
                                     "--threads", str(count)], capture_output=True, text=True, check=True).stdout
            answer = json.loads(output)
            results[label] = (answer["seconds"], answer["tokens"])
    finally:
        os.unlink(corpus_file.name)

    for label, (seconds, tokens) in results.items():
        print(f"{label:24s} {seconds:8.2f} s  {size / 1e6 / seconds:8.2f} MB/s  {tokens} tokens")
    for mode in ("1 thread", "all threads"):
        ours, theirs = results[f"flotilla {mode}"], results[f"tokenizers {mode}"]
        assert ours[1] == theirs[1], f"token counts differ ({mode}): {ours[1]} vs {theirs[1]}"
        print(f"speedup {mode}: {theirs[0] / ours[0]:.2f}x")


if __name__ == "__main__":
    main()
