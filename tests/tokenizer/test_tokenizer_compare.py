"""flotilla_tokenizer against Python's `tokenizers` 0.23.3 on the same tokenizer.json files and texts:
ids, tokens, offsets (character offsets, as Python reports them), type ids and masks for single
texts and pairs, with and without special tokens; decode with and without skip_special_tokens; the
incremental decoder against tokenizers.decoders.DecodeStream; batch encoding.

The C++ side runs through build/bin/flotilla-tokenizer-tool (JSON lines), one process per tokenizer.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer"))
import make_tokenizers  # noqa: E402
from corpus import SAMPLES  # noqa: E402

from conftest import binary  # noqa: E402

TOKENIZERS = [
    "gpt2_bytelevel", "roberta_bytelevel", "llama3_bytelevel", "qwen_bytelevel", "smollm2",
    "split_removed", "split_removed_invert", "split_isolated", "split_isolated_invert",
    "split_merged_with_previous", "split_merged_with_previous_invert", "split_merged_with_next",
    "split_merged_with_next_invert", "split_contiguous", "split_contiguous_invert", "split_string_pattern",
    "llama2_sentencepiece_bpe", "mistral_metaspace_bpe", "gemma_bpe", "t5_unigram", "xlmr_unigram",
    "bert_wordpiece", "bert_wordpiece_cased_truncated", "minilm_wordpiece", "wordlevel_whitespace",
    "wordlevel_digits_punct", "wordlevel_chardelimiter", "bpe_suffix_prefix",
]


@pytest.fixture(scope="session")
def tokenizer_fixtures() -> Path:
    return make_tokenizers.main()


def run_tool(directory: Path, requests: list[dict]) -> list[dict]:
    tool = binary("flotilla-tokenizer-tool")
    text = "".join(json.dumps(request) + "\n" for request in requests)
    result = subprocess.run([str(tool), "jsonl", str(directory)], input=text.encode(), capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def expected_encoding(encoding) -> dict:
    return {"ids": encoding.ids, "tokens": encoding.tokens, "offsets": [list(o) for o in encoding.offsets],
            "type_ids": encoding.type_ids, "special_tokens_mask": encoding.special_tokens_mask,
            "attention_mask": encoding.attention_mask}


def stream_pieces(reference: Tokenizer, ids: list[int], skip: bool) -> list[str]:
    stream = DecodeStream(skip_special_tokens=skip)
    return [stream.step(reference, token_id) or "" for token_id in ids]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_matches_tokenizers(name: str, tokenizer_fixtures: Path) -> None:
    directory = tokenizer_fixtures / name
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    requests, expected = [], []
    for text in SAMPLES:
        for add_special in (True, False):
            requests.append({"op": "encode", "text": text, "add_special_tokens": add_special})
            expected.append(expected_encoding(reference.encode(text, add_special_tokens=add_special)))
    for first, second in zip(SAMPLES[::3], SAMPLES[1::3]):
        requests.append({"op": "encode", "text": first, "pair": second})
        expected.append(expected_encoding(reference.encode(first, second)))
    for text in SAMPLES:
        ids = reference.encode(text).ids
        for skip in (False, True):
            requests.append({"op": "decode", "ids": ids, "skip_special_tokens": skip})
            expected.append({"text": reference.decode(ids, skip_special_tokens=skip)})
        requests.append({"op": "stream", "ids": ids, "skip_special_tokens": False})
        expected.append({"pieces": stream_pieces(reference, ids, False)})
    requests.append({"op": "encode_batch", "texts": SAMPLES})
    expected.append({"encodings": [expected_encoding(e) for e in reference.encode_batch(SAMPLES)]})

    answers = run_tool(directory, requests)
    assert len(answers) == len(requests)
    mismatches = [(request, want, got) for request, want, got in zip(requests, expected, answers) if want != got]
    details = []
    for request, want, got in mismatches[:3]:
        differing = {key: (want.get(key), got.get(key)) for key in set(want) | set(got) if want.get(key) != got.get(key)}
        details.append(f"request {json.dumps(request, ensure_ascii=False)[:200]}\n  differs: "
                       f"{json.dumps(differing, ensure_ascii=False)[:1500]}")
    assert not mismatches, f"{len(mismatches)} of {len(requests)} differ:\n" + "\n".join(details)


def random_texts(count: int, seed: int) -> list[str]:
    """Random strings over the corpus's characters, whitespace and special-token fragments."""
    import random  # noqa: PLC0415

    generator = random.Random(seed)
    characters = sorted(set("".join(SAMPLES))) + [" ", "  ", "\n", "\t", "\u0301", "\u200d"]
    fragments = ["<|endoftext|>", "<mask>", "[SEP]", "<s>", "</s>", "glued", "CaSe", "▁", "<0x41>", "'s", "'ll"]
    texts = []
    for _ in range(count):
        pieces = []
        for _ in range(generator.randint(0, 40)):
            pieces.append(generator.choice(fragments) if generator.random() < 0.08 else generator.choice(characters))
        texts.append("".join(pieces))
    return texts


@pytest.mark.parametrize("name", TOKENIZERS)
def test_matches_tokenizers_on_random_text(name: str, tokenizer_fixtures: Path) -> None:
    directory = tokenizer_fixtures / name
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    texts = random_texts(150, seed=hash(name) % 1000)
    requests = [{"op": "encode", "text": text} for text in texts]
    expected = [expected_encoding(reference.encode(text)) for text in texts]
    requests += [{"op": "decode", "ids": e["ids"], "skip_special_tokens": True} for e in expected[:50]]
    expected += [{"text": reference.decode(e["ids"], skip_special_tokens=True)} for e in expected[:50]]
    answers = run_tool(directory, requests)
    mismatches = [(request, want, got) for request, want, got in zip(requests, expected, answers) if want != got]
    details = [f"{json.dumps(r, ensure_ascii=False)[:300]}\n  want {json.dumps(w, ensure_ascii=False)[:600]}\n"
               f"  got  {json.dumps(g, ensure_ascii=False)[:600]}" for r, w, g in mismatches[:2]]
    assert not mismatches, f"{len(mismatches)} of {len(requests)} differ:\n" + "\n".join(details)
