"""Bad input gives an error naming the file, the key and what was expected."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture
def model_copy(decoder_fixtures, tmp_path):
    destination = tmp_path / "model"
    shutil.copytree(decoder_fixtures / "llama_mha_untied", destination)
    return destination


def forward_error(flotilla, model, tmp_path, ids="5,6,7"):
    result = flotilla.run("forward", str(model), "--input-ids", ids, "--output", str(tmp_path / "o.safetensors"),
                          check=False)
    assert result.returncode != 0, "expected a failure"
    return result.stderr


def test_header_length_past_end_of_file(flotilla, model_copy, tmp_path):
    path = model_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 2)
    path.write_bytes(bytes(data))
    error = forward_error(flotilla, model_copy, tmp_path)
    assert str(path) in error and "runs past the end of the file" in error


def test_corrupt_header_json(flotilla, model_copy, tmp_path):
    path = model_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"{{{{"
    path.write_bytes(bytes(data))
    assert "not valid JSON" in forward_error(flotilla, model_copy, tmp_path)


def rewrite_header(path, edit):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])


def test_overlapping_offsets(flotilla, model_copy, tmp_path):
    def edit(header):
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        first, second = header[names[0]], header[names[1]]
        size = second["data_offsets"][1] - second["data_offsets"][0]
        second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + size]
    rewrite_header(model_copy / "model.safetensors", edit)
    assert "overlap" in forward_error(flotilla, model_copy, tmp_path)


def test_unknown_dtype(flotilla, model_copy, tmp_path):
    rewrite_header(model_copy / "model.safetensors", lambda header: header["lm_head.weight"].update(dtype="F7"))
    error = forward_error(flotilla, model_copy, tmp_path)
    assert "lm_head.weight" in error and 'unknown dtype "F7"' in error


def test_shape_disagrees_with_bytes(flotilla, model_copy, tmp_path):
    rewrite_header(model_copy / "model.safetensors", lambda header: header["lm_head.weight"].update(shape=[7, 7]))
    error = forward_error(flotilla, model_copy, tmp_path)
    assert "lm_head.weight" in error and "shape [7, 7] of F32 needs 196 bytes" in error


def test_missing_tensor(flotilla, model_copy, tmp_path):
    tensors = load_file(str(model_copy / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(model_copy / "model.safetensors"), metadata={"format": "pt"})
    error = forward_error(flotilla, model_copy, tmp_path)
    assert "model.layers.1.mlp.up_proj.weight" in error and "lacks" in error and "model.safetensors" in error


def test_extra_tensor_warns_once_and_loads(flotilla, model_copy, tmp_path):
    tensors = load_file(str(model_copy / "model.safetensors"))
    tensors["model.layers.0.unused_adapter.weight"] = torch.zeros(2)
    tensors["model.extra_scale"] = torch.zeros(1)
    save_file(tensors, str(model_copy / "model.safetensors"), metadata={"format": "pt"})
    result = flotilla.run("forward", str(model_copy), "--input-ids", "5,6", "--output", str(tmp_path / "o.safetensors"))
    warnings = [line for line in result.stderr.splitlines() if "does not use" in line]
    assert len(warnings) == 1
    assert "model.layers.0.unused_adapter.weight" in warnings[0] and "model.extra_scale" in warnings[0]


def test_wrong_shape(flotilla, model_copy, tmp_path):
    tensors = load_file(str(model_copy / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(96, 32)
    save_file(tensors, str(model_copy / "model.safetensors"), metadata={"format": "pt"})
    error = forward_error(flotilla, model_copy, tmp_path)
    assert "model.layers.0.mlp.up_proj.weight: expected shape [96, 64] but got [96, 32]" in error


def test_unknown_model_type_lists_known_ones(flotilla, model_copy, tmp_path):
    config = json.loads((model_copy / "config.json").read_text())
    config["model_type"] = "wizard"
    (model_copy / "config.json").write_text(json.dumps(config))
    error = forward_error(flotilla, model_copy, tmp_path)
    assert 'model_type "wizard" is not supported' in error
    assert all(name in error for name in ("llama", "qwen2", "qwen3", "mistral"))
    assert "config.json" in error


def test_heads_not_dividing_hidden_size(flotilla, model_copy, tmp_path):
    config = json.loads((model_copy / "config.json").read_text())
    config["num_attention_heads"] = 5
    (model_copy / "config.json").write_text(json.dumps(config))
    error = forward_error(flotilla, model_copy, tmp_path)
    assert "config.json" in error and "hidden_size (64) must be a multiple of num_attention_heads (5)" in error


def test_input_id_out_of_vocabulary(flotilla, model_copy, tmp_path):
    error = forward_error(flotilla, model_copy, tmp_path, ids="5,160")
    assert "input id 160 is outside the vocabulary [0, 160)" in error


def test_unknown_attention_implementation(flotilla, model_copy, tmp_path):
    result = flotilla.run("forward", str(model_copy), "--input-ids", "5", "--attention", "flash_attention_9",
                          "--output", str(tmp_path / "o.safetensors"), check=False)
    assert result.returncode != 0 and "flash_attention_9" in result.stderr and "eager" in result.stderr


@pytest.fixture
def encoder_copy(encoder_fixtures, tmp_path):
    destination = tmp_path / "encoder"
    shutil.copytree(encoder_fixtures / "bert_mlm_untied", destination)
    return destination


def test_encoder_heads_not_dividing_hidden_size(flotilla, encoder_copy, tmp_path):
    config = json.loads((encoder_copy / "config.json").read_text())
    config["num_attention_heads"] = 5
    (encoder_copy / "config.json").write_text(json.dumps(config))
    error = forward_error(flotilla, encoder_copy, tmp_path)
    assert "config.json" in error and "hidden_size (32) must be a multiple of num_attention_heads (5)" in error


def test_encoder_missing_tensor(flotilla, encoder_copy, tmp_path):
    tensors = load_file(str(encoder_copy / "model.safetensors"))
    del tensors["bert.encoder.layer.1.attention.self.key.bias"]
    save_file(tensors, str(encoder_copy / "model.safetensors"), metadata={"format": "pt"})
    error = forward_error(flotilla, encoder_copy, tmp_path)
    assert "bert.encoder.layer.1.attention.self.key.bias" in error and "lacks" in error and "model.safetensors" in error


def test_encoder_token_type_id_out_of_range(flotilla, encoder_copy, tmp_path):
    result = flotilla.run("forward", str(encoder_copy), "--input-ids", "5,6,7", "--token-type-ids", "0,1,3",
                          "--output", str(tmp_path / "o.safetensors"), check=False)
    assert result.returncode != 0
    assert "token type id 3 is outside [0, type_vocab_size=3)" in result.stderr
