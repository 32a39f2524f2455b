"""CLI commands that need no weights take a registry reference as well as a folder: tokenize,
detokenize, chat-template and process-image pull only the small files (tokenizer, template,
processor config) of the commit into the model cache, and print what they print for the folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from conftest import REPOSITORY, binary

SMOLLM2 = REPOSITORY / "tests" / "fixtures" / "generated" / "models" / "smollm2" / "checkpoint"


def flotilla(*arguments: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(binary("flotilla")), *arguments], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 0, f"flotilla {' '.join(arguments)}: {result.stderr}"
    return result


def test_preprocessing_commands_take_registry_references(start_service, tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessor

    from models.conftest import run_script  # noqa: PLC0415

    run_script("make_smollm2.py", str(SMOLLM2.parent))
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"]:
        shutil.copy(SMOLLM2 / name, folder / name)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(os.urandom(4 << 20))  # weights these commands must not pull
    image = tmp_path / "picture.png"
    Image.new("RGB", (48, 40), (200, 30, 90)).save(image)
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Hello there"}]))

    registry = start_service("registry")
    env = {"FLOTILLA_REGISTRY": registry.grpc_address, "FLOTILLA_CACHE": str(tmp_path / "cache")}
    pushed = json.loads(flotilla("push", str(folder), "acme/tools", "--json", env=env).stdout)

    for arguments in (["tokenize", "{}", "--text", "Hello world"], ["detokenize", "{}", "--ids", "19556,905"],
                      ["chat-template", "{}", "--messages", str(messages), "--add-generation-prompt"]):
        from_folder = flotilla(*[str(folder) if a == "{}" else a for a in arguments], env=env).stdout
        from_registry = flotilla(*["acme/tools@main" if a == "{}" else a for a in arguments], env=env).stdout
        assert from_registry == from_folder, arguments

    from safetensors.torch import load_file

    flotilla("process-image", str(folder), str(image), "--output", str(tmp_path / "local.safetensors"), env=env)
    flotilla("process-image", "acme/tools", str(image), "--output", str(tmp_path / "pulled.safetensors"), env=env)
    import torch

    assert torch.equal(load_file(str(tmp_path / "local.safetensors"))["pixel_values"],
                       load_file(str(tmp_path / "pulled.safetensors"))["pixel_values"])

    cached = tmp_path / "cache" / "acme" / "tools" / pushed["commit_id"]
    assert (cached / "tokenizer.json").is_file() and (cached / "preprocessor_config.json").is_file()
    assert not (cached / "model.safetensors").exists(), "a command that needs no weights pulled them"

    missing = subprocess.run([str(binary("flotilla")), "tokenize", "acme/none", "--text", "x"], capture_output=True,
                             text=True, env={**os.environ, **env})
    assert missing.returncode == 3 and "acme/none" in missing.stderr
