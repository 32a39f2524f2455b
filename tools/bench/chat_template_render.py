#!/usr/bin/env python3
"""Chat template rendering speed: Flotilla's interpreter vs jinja2 through transformers.

    python tools/bench/chat_template_render.py [--build-dir build] [--turns 20] [--renders 2000]

For each published template in tests/fixtures/chat_templates it builds a minimal tokenizer
directory, then times
  * transformers: `tokenizer.apply_chat_template(messages, tokenize=False, ...)` in a loop (the
    compiled jinja2 template is cached by transformers, so this is render time plus input conversion);
  * Flotilla: `flotilla chat-template DIR --messages ... --repeat N`, which parses the template once
    and times N renders (message JSON parsing included), reported on stderr.
Both outputs are checked to be equal first. One thread each; same machine, same run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "tests" / "chat_template"))
sys.path.insert(0, str(REPOSITORY / "tests"))

from test_chat_template import (  # noqa: E402
    GEMMA_TOKENS, LLAMA3_TOKENS, MISTRAL_TOKENS, QWEN_TOKENS, TEMPLATES, TIME_TOOL, WEATHER_TOOL, make_tokenizer_directory)

BENCHMARKS = [
    ("llama-3.3-70b-instruct.jinja", LLAMA3_TOKENS, True, {"date_string": "25 Nov 2026"}),
    ("qwen2.5-instruct.jinja", QWEN_TOKENS, True, {}),
    ("qwen3-0.6b.jinja", QWEN_TOKENS, True, {}),
    ("mistral-7b-instruct-v0.3.jinja", MISTRAL_TOKENS, True, {}),
    ("gemma-3-it.jinja", GEMMA_TOKENS, False, {}),
]


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful assistant. " * 4}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: what is the weather like in Zürich today? " * 3})
        messages.append({"role": "assistant", "content": f"Answer {turn}: it is sunny, 21 °C, light wind from the west. " * 3})
    messages.append({"role": "user", "content": "Thanks, and tomorrow?"})
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=str(REPOSITORY / "build"))
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--renders", type=int, default=2000)
    arguments = parser.parse_args()
    flotilla = Path(arguments.build_dir) / "bin" / "flotilla"

    import transformers  # noqa: PLC0415

    messages = conversation(arguments.turns)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        messages_file = scratch_path / "messages.json"
        messages_file.write_text(json.dumps(messages, ensure_ascii=False))
        tools_file = scratch_path / "tools.json"
        tools_file.write_text(json.dumps([WEATHER_TOOL, TIME_TOOL], ensure_ascii=False))
        for template_name, tokens, with_tools, extra in BENCHMARKS:
            directory = make_tokenizer_directory(scratch_path / template_name, (TEMPLATES / template_name).read_text(), tokens)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
            tools = [WEATHER_TOOL, TIME_TOOL] if with_tools else None
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, tools=tools, **extra)
            start = time.perf_counter()
            for _ in range(arguments.renders):
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, tools=tools, **extra)
            reference_seconds = (time.perf_counter() - start) / arguments.renders

            command = [str(flotilla), "chat-template", str(directory), "--messages", str(messages_file),
                       "--add-generation-prompt", "--repeat", str(arguments.renders)]
            if with_tools:
                command += ["--tools", str(tools_file)]
            if extra:
                command += ["--extra-context", json.dumps(extra)]
            completed = subprocess.run(command, capture_output=True, check=True)
            assert completed.stdout.decode() == expected, f"{template_name}: outputs differ"
            timing = json.loads(completed.stderr.decode().strip().splitlines()[-1])
            flotilla_seconds = timing["microseconds_per_render"] / 1e6
            results.append({
                "template": template_name, "messages": len(messages), "tools": with_tools, "output_bytes": len(expected.encode()),
                "transformers_us": round(reference_seconds * 1e6, 1), "flotilla_us": round(flotilla_seconds * 1e6, 1),
                "speedup": round(reference_seconds / flotilla_seconds, 2),
            })
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{'template':<28} {'tools':>5} {'transformers µs':>16} {'flotilla µs':>12} {'speedup':>8}")
    for row in results:
        print(f"{row['template']:<28} {str(row['tools']):>5} {row['transformers_us']:>16.1f} {row['flotilla_us']:>12.1f} "
              f"{row['speedup']:>7.2f}x")


if __name__ == "__main__":
    main()
