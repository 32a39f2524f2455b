"""`flotilla tokenize` / `flotilla detokenize` against `tokenizers`, and invalid UTF-8 handling."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer"))
import make_tokenizers  # noqa: E402

from conftest import binary  # noqa: E402
from test_tokenizer_compare import run_tool  # noqa: E402


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return make_tokenizers.main()


@pytest.mark.parametrize("name", ["smollm2", "minilm_wordpiece", "t5_unigram"])
@pytest.mark.parametrize("special", [True, False])
def test_tokenize_prints_ids_tokens_offsets(name: str, special: bool, fixtures: Path) -> None:
    directory = fixtures / name
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    text = "Hello 世界! Привет 👨‍👩‍👧 e\u0301"
    command = [str(binary("flotilla")), "tokenize", str(directory), "--text", text, "--pair", "second part"]
    if not special:
        command.append("--no-special-tokens")
    output = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    expected = reference.encode(text, "second part", add_special_tokens=special)
    assert output == {"ids": expected.ids, "tokens": expected.tokens, "offsets": [list(o) for o in expected.offsets]}
    ids = ",".join(str(i) for i in expected.ids)
    decoded = subprocess.run([str(binary("flotilla")), "detokenize", str(directory), "--ids", ids],
                             capture_output=True, text=True, check=True).stdout
    assert decoded == reference.decode(expected.ids, skip_special_tokens=False) + "\n"


def test_tokenize_reports_missing_directory(tmp_path: Path) -> None:
    result = subprocess.run([str(binary("flotilla")), "tokenize", str(tmp_path), "--text", "x"],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "tokenizer.json" in result.stderr


def test_invalid_utf8_is_rejected_with_its_byte_offset(fixtures: Path) -> None:
    cases = {"61ff62": 1, "e282": 0, "6162eda080": 2, "c328": 0, "f4908080": 0, "41c0af": 1}
    answers = run_tool(fixtures / "smollm2", [{"op": "encode_hex", "hex": h} for h in cases])
    for (hex_text, offset), answer in zip(cases.items(), answers):
        assert "error" in answer, hex_text
        assert f"at byte offset {offset}" in answer["error"], answer["error"]
    # Valid text given as bytes encodes as the str would.
    text = "ok ✓ 😀"
    (answer,) = run_tool(fixtures / "smollm2", [{"op": "encode_hex", "hex": text.encode().hex()}])
    assert answer["ids"] == Tokenizer.from_file(str(fixtures / "smollm2" / "tokenizer.json")).encode(text).ids
