"""The preprocess service end to end: a real registry and a real flotilla-preprocess process, models
pushed to the registry through its gRPC API, every RPC called through the generated Python stubs
and compared with the Python references on the same files: `tokenizers` (Tokenize, Detokenize,
DecodeStream), transformers' AutoTokenizer.apply_chat_template and AutoImageProcessor (fast).
Then the model cache (by commit id, single-flight loads) and every kind of bad input with its code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import sys
import threading
import urllib.request
import zlib
from pathlib import Path

import grpc
import pytest

from conftest import REPOSITORY, binary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPOSITORY / "tests" / "fixtures" / "tokenizer"))
sys.path.insert(0, str(REPOSITORY / "tests" / "fixtures" / "image"))
import make_tokenizers  # noqa: E402
from corpus import SAMPLES  # noqa: E402

CHAT_TEMPLATES = REPOSITORY / "tests" / "fixtures" / "chat_templates"
TOKENIZERS = ["smollm2", "bert_wordpiece", "t5_unigram", "llama3_bytelevel", "roberta_bytelevel",
              "llama2_sentencepiece_bpe", "minilm_wordpiece"]
STREAM_TEXTS = SAMPLES + ["😀👍🏽 👨‍👩‍👧 中文字符 ﷽ नमस्ते ภาษาไทย", "a" * 300 + " é" * 50]

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City, e.g. Zürich"}},
                   "required": ["city"]}}}
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Hello! How are you?"}],
    "system_multi_turn": [{"role": "system", "content": "Be kind."},
                          {"role": "user", "content": "Bonjour, ça va ? 😀"},
                          {"role": "assistant", "content": "Oui, très bien."},
                          {"role": "user", "content": "中文; Привет \"quote\" \\ backslash"}],
}


# --- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tokenizer_fixtures() -> Path:
    return make_tokenizers.main()


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    import make_images  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("images")
    make_images.make(folder)
    return folder


class Mesh:
    """A registry and a preprocess service wired to it."""

    def __init__(self, start_service, stubs, *preprocess_flags: str):
        self.stubs = stubs
        self.registry = start_service("registry")
        self.preprocess = start_service("preprocess", f"--registry={self.registry.grpc_address}",
                                        "--allow_local_paths", *preprocess_flags)
        self.registry_stub = stubs.registry_pb2_grpc.RegistryServiceStub(self.registry.channel())
        # pixel_values of a few pictures exceed gRPC's default 4 MiB receive limit.
        channel = grpc.insecure_channel(self.preprocess.grpc_address,
                                        options=[("grpc.max_receive_message_length", 256 << 20)])
        self.preprocess._channels.append(channel)
        self.stub = stubs.preprocess_pb2_grpc.PreprocessServiceStub(channel)

    def push(self, folder: Path, repository: str, branch: str = "main") -> str:
        """Pushes every file of `folder` as one commit; returns the commit id."""
        pb = self.stubs.registry_pb2
        namespace, name = repository.split("/")
        self.registry_stub.CreateRepository(pb.CreateRepositoryRequest(namespace=namespace, name=name, kind=1,
                                                                       exist_ok=True))
        entries, blobs = [], {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            blobs[digest] = data
            entries.append(pb.FileEntry(path=path.relative_to(folder).as_posix(), size=len(data), sha256=digest))
        missing = self.registry_stub.FindMissingBlobs(
            pb.FindMissingBlobsRequest(sha256=list(blobs), namespace=namespace, name=name)).missing_sha256
        for digest in missing:
            data = blobs[digest]
            chunks = [pb.UploadBlobRequest(sha256=digest, size=len(data), offset=0, namespace=namespace, name=name,
                                           data=data[:1 << 20])]
            chunks += [pb.UploadBlobRequest(data=data[i:i + (1 << 20)]) for i in range(1 << 20, len(data), 1 << 20)]
            assert self.registry_stub.UploadBlob(iter(chunks)).complete
        commit = self.registry_stub.CreateCommit(pb.CreateCommitRequest(namespace=namespace, name=name, branch=branch,
                                                                        message="push", files=entries))
        return commit.commit_id

    def model(self, repository: str, revision: str = "") -> object:
        namespace, name = repository.split("/")
        return self.stubs.common_pb2.ModelReference(namespace=namespace, name=name, revision=revision)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.preprocess.http_url("/metrics")) as response:
            return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def mesh(start_service, stubs) -> Mesh:
    return Mesh(start_service, stubs)


def byte_offsets(text: str, offsets) -> list[int]:
    flat = []
    for start, end in offsets:
        flat += [len(text[:start].encode()), len(text[:end].encode())]
    return flat


def expected_encoding(encoding, text: str, pair: str | None = None) -> dict:
    offsets = []
    for index, (start, end) in enumerate(encoding.offsets):
        source = pair if pair is not None and encoding.sequence_ids[index] == 1 else text
        offsets += [len(source[:start].encode()), len(source[:end].encode())]
    return {"ids": list(encoding.ids), "tokens": list(encoding.tokens), "offsets": offsets,
            "type_ids": list(encoding.type_ids), "attention_mask": list(encoding.attention_mask)}


def actual_encoding(encoding) -> dict:
    return {"ids": list(encoding.ids), "tokens": list(encoding.tokens), "offsets": list(encoding.offsets),
            "type_ids": list(encoding.type_ids), "attention_mask": list(encoding.attention_mask)}


def chat_directory(tmp_path: Path, tokenizer_fixtures: Path, name: str, template: str, tokens: dict) -> Path:
    """A tokenizer folder (a trained byte-level BPE) with `template` and special tokens in its config."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    folder = tmp_path / name
    folder.mkdir(parents=True)
    tokenizer = Tokenizer.from_file(str(tokenizer_fixtures / "qwen_bytelevel" / "tokenizer.json"))
    tokenizer.add_special_tokens(sorted(set(tokens.values())))
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return folder


def chat_request(mesh: Mesh, model, messages: list[dict], **options):
    pb = mesh.stubs.preprocess_pb2
    converted = []
    for message in messages:
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        content = message.get("content")
        if not isinstance(content, str):
            extra["content"] = content
            content = ""
        converted.append(pb.ChatMessage(role=message["role"], content=content,
                                        extra_json=json.dumps(extra) if extra else ""))
    tools = options.pop("tools", None)
    return pb.ApplyChatTemplateRequest(model=model, messages=converted, tools_json=json.dumps(tools) if tools else "",
                                       **options)


def expect_error(call, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    for fragment in fragments:
        assert fragment in raised.value.details(), raised.value.details()
    return raised.value.details()


# --- Tokenize / Detokenize / DetokenizeStream ----------------------------------------------------

def test_tokenize_matches_tokenizers(mesh, tokenizer_fixtures):
    from tokenizers import Tokenizer  # noqa: PLC0415

    pb = mesh.stubs.preprocess_pb2
    for name in TOKENIZERS:
        directory = tokenizer_fixtures / name
        mesh.push(directory, f"acme/{name.replace('_', '-')}")
        model = mesh.model(f"acme/{name.replace('_', '-')}")
        reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
        for add_special in (True, False):
            response = mesh.stub.Tokenize(pb.TokenizeRequest(model=model, texts=SAMPLES, add_special_tokens=add_special))
            assert len(response.encodings) == len(SAMPLES)
            for text, encoding in zip(SAMPLES, response.encodings):
                expected = expected_encoding(reference.encode(text, add_special_tokens=add_special), text)
                assert actual_encoding(encoding) == expected, (name, text)
        firsts, seconds = SAMPLES[::2][:6], SAMPLES[1::2][:6]
        response = mesh.stub.Tokenize(pb.TokenizeRequest(model=model, texts=firsts, text_pairs=seconds,
                                                         add_special_tokens=True))
        for first, second, encoding in zip(firsts, seconds, response.encodings):
            expected = expected_encoding(reference.encode(first, second), first, second)
            assert actual_encoding(encoding) == expected, (name, first, second)
        # max_length: tokenizers' enable_truncation(max_length) on the same texts.
        reference.enable_truncation(max_length=7)
        response = mesh.stub.Tokenize(pb.TokenizeRequest(model=model, texts=SAMPLES, add_special_tokens=True,
                                                         max_length=7))
        for text, encoding in zip(SAMPLES, response.encodings):
            assert list(encoding.ids) == reference.encode(text).ids, (name, text)


def test_detokenize_matches_tokenizers(mesh, tokenizer_fixtures):
    from tokenizers import Tokenizer  # noqa: PLC0415

    pb = mesh.stubs.preprocess_pb2
    for name in ("smollm2", "llama2_sentencepiece_bpe", "bert_wordpiece", "t5_unigram"):
        directory = tokenizer_fixtures / name
        mesh.push(directory, f"acme/{name.replace('_', '-')}")
        model = mesh.model(f"acme/{name.replace('_', '-')}")
        reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
        for text in STREAM_TEXTS:
            ids = reference.encode(text).ids
            for skip in (False, True):
                response = mesh.stub.Detokenize(pb.DetokenizeRequest(model=model, ids=ids, skip_special_tokens=skip))
                assert response.text == reference.decode(ids, skip_special_tokens=skip), (name, text, skip)


def stream(mesh: Mesh, model, ids: list[int], per_message: int, skip: bool) -> list[str]:
    pb = mesh.stubs.preprocess_pb2
    messages = []
    for i in range(0, len(ids), per_message):
        message = pb.DetokenizeStreamRequest(ids=ids[i:i + per_message], skip_special_tokens=skip)
        if i == 0:
            message.model.CopyFrom(model)  # later messages leave the model out
        messages.append(message)
    return [response.text for response in mesh.stub.DetokenizeStream(iter(messages))]


def test_detokenize_stream_matches_decode_stream_and_full_decode(mesh, tokenizer_fixtures):
    from tokenizers import Tokenizer  # noqa: PLC0415
    from tokenizers.decoders import DecodeStream  # noqa: PLC0415

    for name in ("smollm2", "llama2_sentencepiece_bpe"):
        directory = tokenizer_fixtures / name
        mesh.push(directory, f"acme/{name.replace('_', '-')}")
        model = mesh.model(f"acme/{name.replace('_', '-')}")
        reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
        for text in STREAM_TEXTS:
            ids = reference.encode(text).ids
            for skip in (False, True):
                pieces = stream(mesh, model, ids, 1, skip)
                decode_stream = DecodeStream(skip_special_tokens=skip)
                expected = [decode_stream.step(reference, token_id) or "" for token_id in ids]
                assert pieces == expected, (name, text)
                assert all("\ufffd" not in piece for piece in pieces) or "\ufffd" in text
                full = reference.decode(ids, skip_special_tokens=skip)
                assert "".join(pieces) == full, (name, text)
                # Several ids per message: one response per message, the same text in the end.
                grouped = stream(mesh, model, ids, 3, skip)
                assert len(grouped) == (len(ids) + 2) // 3
                assert "".join(grouped) == full


def test_byte_fallback_stream_never_splits_a_character(mesh, tokenizer_fixtures):
    """A character made of several byte tokens comes out whole, in the message of its last byte."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    directory = tokenizer_fixtures / "smollm2"
    mesh.push(directory, "acme/smol")
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    text = "😀"
    ids = reference.encode(text, add_special_tokens=False).ids
    pieces = stream(mesh, mesh.model("acme/smol"), ids, 1, False)
    assert "".join(pieces) == text
    assert [piece for piece in pieces if piece] == [text]


# --- ApplyChatTemplate ---------------------------------------------------------------------------

def test_apply_chat_template_matches_transformers(mesh, tokenizer_fixtures, tmp_path):
    from transformers import AutoTokenizer  # noqa: PLC0415

    qwen = chat_directory(tmp_path, tokenizer_fixtures, "qwen", (CHAT_TEMPLATES / "qwen2.5-instruct.jinja").read_text(),
                          {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    llama = chat_directory(tmp_path, tokenizer_fixtures, "llama",
                           (CHAT_TEMPLATES / "llama-3.2-3b-instruct.jinja").read_text(),
                           {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    cases = {"acme/smollm2-chat": tokenizer_fixtures / "smollm2", "acme/qwen-chat": qwen, "acme/llama-chat": llama}
    for repository, directory in cases.items():
        mesh.push(directory, repository)
        reference = AutoTokenizer.from_pretrained(str(directory))
        model = mesh.model(repository)
        for conversation_name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (False, True):
                for tools in (None, [WEATHER_TOOL]):
                    if tools and repository == "acme/smollm2-chat":
                        continue
                    kwargs = {"add_generation_prompt": add_generation_prompt, "tools": tools}
                    if repository == "acme/llama-chat":
                        kwargs["date_string"] = "26 Jul 2024"  # the template calls strftime_now otherwise
                    expected = reference.apply_chat_template(messages, tokenize=False, **kwargs)
                    expected_ids = reference.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                                 **kwargs)["input_ids"]
                    extra = {"kwargs_json": json.dumps({"date_string": "26 Jul 2024"})} \
                        if repository == "acme/llama-chat" else {}
                    response = mesh.stub.ApplyChatTemplate(chat_request(
                        mesh, model, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                        tokenize=True, **extra))
                    assert response.prompt == expected, (repository, conversation_name, add_generation_prompt, tools)
                    assert list(response.encoding.ids) == list(expected_ids), (repository, conversation_name)


def test_apply_chat_template_with_tool_calls(mesh, tokenizer_fixtures, tmp_path):
    from transformers import AutoTokenizer  # noqa: PLC0415

    qwen = chat_directory(tmp_path, tokenizer_fixtures, "qwen", (CHAT_TEMPLATES / "qwen2.5-instruct.jinja").read_text(),
                          {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    mesh.push(qwen, "acme/qwen-tools")
    messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "content": "{\"temperature\": 21}", "name": "get_weather"},
    ]
    reference = AutoTokenizer.from_pretrained(str(qwen))
    expected = reference.apply_chat_template(messages, tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=False)
    response = mesh.stub.ApplyChatTemplate(chat_request(mesh, mesh.model("acme/qwen-tools"), messages,
                                                        add_generation_prompt=True, tools=[WEATHER_TOOL]))
    assert response.prompt == expected
    assert not response.HasField("encoding")


# --- ProcessImages -------------------------------------------------------------------------------

@pytest.mark.parametrize("class_name,kwargs,layout", [
    ("CLIPImageProcessor", {}, "preprocessor_config.json"),
    # All that transformers 5's CLIPProcessor.save_pretrained writes: the image processor nested in
    # processor_config.json.
    ("CLIPImageProcessor", {}, "processor_config.json"),
    ("Qwen2VLImageProcessor", {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}, "preprocessor_config.json"),
])
def test_process_images_matches_transformers(mesh, images, tmp_path, class_name, kwargs, layout):
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    processor = getattr(transformers, class_name)(**kwargs)
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    if layout == "processor_config.json":
        image_processor = json.loads((folder / "preprocessor_config.json").read_text())
        (folder / "preprocessor_config.json").unlink()
        (folder / "processor_config.json").write_text(json.dumps({"image_processor": image_processor,
                                                                  "processor_class": "CLIPProcessor"}))
    mesh.push(folder, "acme/vision")
    paths = [images / name for name in ("jpeg_q95_420.jpg", "png_rgba.png", "webp_lossy.webp", "jpeg_odd_333x517.jpg",
                                        "exif_orientation_6.jpg")]
    expected = transformers.AutoImageProcessor.from_pretrained(folder)([str(p) for p in paths], return_tensors="pt")
    response = mesh.stub.ProcessImages(mesh.stubs.preprocess_pb2.ProcessImagesRequest(
        model=mesh.model("acme/vision"), images=[p.read_bytes() for p in paths]))
    dtypes = {mesh.stubs.common_pb2.DATA_TYPE_FLOAT32: torch.float32, mesh.stubs.common_pb2.DATA_TYPE_INT64: torch.int64}
    tensors = {t.name: torch.frombuffer(bytearray(t.data), dtype=dtypes[t.dtype]).reshape(list(t.shape))
               for t in response.tensors}
    assert set(tensors) == set(expected.keys())
    for name, value in expected.items():
        assert tensors[name].shape == value.shape, name
        assert tensors[name].dtype == value.dtype, name
        assert (tensors[name].double() - value.double()).abs().max().item() <= 1e-5, name


# --- the model cache -----------------------------------------------------------------------------

def test_cache_follows_the_branch_commit(mesh, tokenizer_fixtures, tmp_path):
    pb = mesh.stubs.preprocess_pb2
    folder = tmp_path / "chat"
    shutil.copytree(tokenizer_fixtures / "smollm2", folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}v1:{{ m.content }}{% endfor %}")
    first_commit = mesh.push(folder, "acme/moving")
    model = mesh.model("acme/moving")
    request = chat_request(mesh, model, [{"role": "user", "content": "hi"}])
    assert mesh.stub.ApplyChatTemplate(request).prompt == "v1:hi"
    assert mesh.stub.ApplyChatTemplate(request).prompt == "v1:hi"
    text = mesh.metrics()
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", rpc="ApplyChatTemplate", result="miss") == 1
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", rpc="ApplyChatTemplate", result="hit") == 1

    (folder / "chat_template.jinja").write_text("{% for m in messages %}v2:{{ m.content }}{% endfor %}")
    second_commit = mesh.push(folder, "acme/moving")
    assert second_commit != first_commit
    assert mesh.stub.ApplyChatTemplate(request).prompt == "v2:hi"
    # The old commit, named by its id (or a prefix of it), still renders the old template.
    pinned = chat_request(mesh, mesh.model("acme/moving", first_commit), [{"role": "user", "content": "hi"}])
    assert mesh.stub.ApplyChatTemplate(pinned).prompt == "v1:hi"
    prefix = chat_request(mesh, mesh.model("acme/moving", first_commit[:12]), [{"role": "user", "content": "hi"}])
    assert mesh.stub.ApplyChatTemplate(prefix).prompt == "v1:hi"
    text = mesh.metrics()
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", rpc="ApplyChatTemplate", result="miss") == 2
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", rpc="ApplyChatTemplate", result="hit") == 3
    # Only the processor files were pulled, into a folder named by the commit.
    cached = mesh.preprocess.data_dir / "cache" / "acme" / "moving"
    assert sorted(p.name for p in cached.iterdir()) == sorted([first_commit, second_commit])
    assert mesh.stub.Tokenize(pb.TokenizeRequest(model=model, texts=["x"])).encodings[0].ids
    assert metric(mesh.metrics(), "flotilla_preprocess_tokens_total", rpc="Tokenize") >= 1


def test_concurrent_first_loads_load_once(mesh, tokenizer_fixtures):
    pb = mesh.stubs.preprocess_pb2
    mesh.push(tokenizer_fixtures / "smollm2", "acme/smol")
    request = pb.TokenizeRequest(model=mesh.model("acme/smol"), texts=["Hello world"], add_special_tokens=True)
    results, errors = [], []

    def call():
        try:
            results.append(list(mesh.stub.Tokenize(request).encodings[0].ids))
        except grpc.RpcError as error:  # pragma: no cover - reported below
            errors.append(error.details())

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 16 and all(r == results[0] for r in results)
    text = mesh.metrics()
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", rpc="Tokenize", result="miss") == 1
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", rpc="Tokenize", result="hit") == 15
    assert mesh.preprocess.log().count("preprocess model loaded") == 1


def test_lru_bound_evicts_and_reloads(start_service, stubs, tokenizer_fixtures):
    mesh = Mesh(start_service, stubs, "--cache_entries=1")
    pb = stubs.preprocess_pb2
    mesh.push(tokenizer_fixtures / "smollm2", "acme/a")
    mesh.push(tokenizer_fixtures / "bert_wordpiece", "acme/b")
    for repository in ("acme/a", "acme/a", "acme/b", "acme/a"):
        mesh.stub.Tokenize(pb.TokenizeRequest(model=mesh.model(repository), texts=["hello"]))
    text = mesh.metrics()
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", result="miss") == 3
    assert metric(text, "flotilla_preprocess_model_cache_lookups_total", result="hit") == 1
    assert metric(text, "flotilla_preprocess_cached_models") == 1


def test_local_paths_only_when_allowed(start_service, stubs, tokenizer_fixtures):
    from tokenizers import Tokenizer  # noqa: PLC0415

    pb = stubs.preprocess_pb2
    directory = tokenizer_fixtures / "smollm2"
    local = stubs.common_pb2.ModelReference(local_path=str(directory))
    allowed = Mesh(start_service, stubs)
    response = allowed.stub.Tokenize(pb.TokenizeRequest(model=local, texts=["Hello world"], add_special_tokens=True))
    assert list(response.encodings[0].ids) == Tokenizer.from_file(str(directory / "tokenizer.json")).encode(
        "Hello world").ids
    strict = start_service("preprocess")  # no --allow_local_paths, no --registry
    stub = stubs.preprocess_pb2_grpc.PreprocessServiceStub(strict.channel())
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=local, texts=["x"])),
                 grpc.StatusCode.PERMISSION_DENIED, "--allow_local_paths")
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=stubs.common_pb2.ModelReference(namespace="acme", name="x"),
                                                          texts=["x"])),
                 grpc.StatusCode.FAILED_PRECONDITION, "acme/x", "--registry")


# --- bad input -----------------------------------------------------------------------------------

def test_bad_input_gets_precise_errors(start_service, stubs, tokenizer_fixtures, images, tmp_path):
    from transformers import CLIPImageProcessor  # noqa: PLC0415

    mesh = Mesh(start_service, stubs, "--max_text_bytes=1000", "--max_images=3", "--max_image_pixels=100000",
                "--max_ids=500")
    pb, common = stubs.preprocess_pb2, stubs.common_pb2
    mesh.push(tokenizer_fixtures / "smollm2", "acme/smol")
    model = mesh.model("acme/smol")
    vision = tmp_path / "vision"
    CLIPImageProcessor().save_pretrained(vision)
    mesh.push(vision, "acme/vision")
    raising = tmp_path / "raising"
    shutil.copytree(tokenizer_fixtures / "smollm2", raising)
    (raising / "chat_template.jinja").write_text("{% if messages[0].role == 'system' %}"
                                                 "{{ raise_exception('System role not supported') }}{% endif %}ok")
    mesh.push(raising, "acme/raising")
    stub = mesh.stub

    # Unknown models, revisions, and malformed references.
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=mesh.model("acme/nope"), texts=["x"])),
                 grpc.StatusCode.NOT_FOUND, "acme/nope")
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=mesh.model("acme/smol", "no-such-branch"), texts=["x"])),
                 grpc.StatusCode.NOT_FOUND, "acme/smol@no-such-branch")
    expect_error(lambda: stub.Detokenize(pb.DetokenizeRequest(model=mesh.model("acme/nope"), ids=[1])),
                 grpc.StatusCode.NOT_FOUND, "acme/nope")
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(texts=["x"])), grpc.StatusCode.INVALID_ARGUMENT, "names no model")
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=common.ModelReference(namespace="ac me", name="x"),
                                                          texts=["x"])),
                 grpc.StatusCode.INVALID_ARGUMENT, "ac me")
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=common.ModelReference(local_path="/no/such/folder"),
                                                          texts=["x"])),
                 grpc.StatusCode.NOT_FOUND, "/no/such/folder")
    # A model without the part the RPC needs.
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=mesh.model("acme/vision"), texts=["x"])),
                 grpc.StatusCode.FAILED_PRECONDITION, "acme/vision", "tokenizer.json")
    expect_error(lambda: stub.ProcessImages(pb.ProcessImagesRequest(model=model, images=[b"x"])),
                 grpc.StatusCode.FAILED_PRECONDITION, "acme/smol", "preprocessor_config.json")

    # Oversized requests name the limit.
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=model, texts=["a" * 600, "b" * 600])),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "1200", "1000", "--max_text_bytes")
    expect_error(lambda: stub.ApplyChatTemplate(chat_request(mesh, model, [{"role": "user", "content": "a" * 2000}])),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "1000", "--max_text_bytes")
    expect_error(lambda: stub.Detokenize(pb.DetokenizeRequest(model=model, ids=[1] * 501)),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "500", "--max_ids")
    small = (images / "jpeg_tiny_7x3.jpg").read_bytes()
    expect_error(lambda: stub.ProcessImages(pb.ProcessImagesRequest(model=mesh.model("acme/vision"), images=[small] * 4)),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "4 images", "3", "--max_images")
    large = (images / "jpeg_q95_420.jpg").read_bytes()  # 640x480 = 307200 pixels
    expect_error(lambda: stub.ProcessImages(pb.ProcessImagesRequest(model=mesh.model("acme/vision"),
                                                                    images=[small, large])),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "image 1", "100000")

    # Corrupt images name their index.
    wide = (images / "jpeg_wide_1000x90.jpg").read_bytes()  # 90000 pixels: within the limit
    truncated = wide[: len(wide) // 3]
    for index, data, fragment in ((1, truncated, "truncated"), (2, b"not an image", "unrecognised image data"),
                                  (0, b"", "unrecognised image data")):
        batch = [small, small, small]
        batch[index] = data
        expect_error(lambda: stub.ProcessImages(pb.ProcessImagesRequest(model=mesh.model("acme/vision"), images=batch)),
                     grpc.StatusCode.INVALID_ARGUMENT, f"image {index}", fragment)
    expect_error(lambda: stub.ProcessImages(pb.ProcessImagesRequest(model=mesh.model("acme/vision"))),
                 grpc.StatusCode.INVALID_ARGUMENT, "no images")

    # Ids outside the vocabulary.
    expect_error(lambda: stub.Detokenize(pb.DetokenizeRequest(model=model, ids=[1, 2, 10_000_000])),
                 grpc.StatusCode.INVALID_ARGUMENT, "10000000", "position 2", "vocabulary")
    expect_error(lambda: stub.Detokenize(pb.DetokenizeRequest(model=model, ids=[-1])),
                 grpc.StatusCode.INVALID_ARGUMENT, "-1", "vocabulary")
    expect_error(lambda: list(stub.DetokenizeStream(iter([pb.DetokenizeStreamRequest(model=model, ids=[1]),
                                                          pb.DetokenizeStreamRequest(ids=[99_999_999])]))),
                 grpc.StatusCode.INVALID_ARGUMENT, "99999999")
    expect_error(lambda: list(stub.DetokenizeStream(iter([pb.DetokenizeStreamRequest(model=mesh.model("acme/nope"),
                                                                                     ids=[1])]))),
                 grpc.StatusCode.NOT_FOUND, "acme/nope")

    # Malformed requests.
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=model, texts=["a", "b"], text_pairs=["c"])),
                 grpc.StatusCode.INVALID_ARGUMENT, "text_pairs")
    expect_error(lambda: stub.Tokenize(pb.TokenizeRequest(model=model, texts=["a"], max_length=-3)),
                 grpc.StatusCode.INVALID_ARGUMENT, "max_length")
    expect_error(lambda: stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(
        model=model, messages=[pb.ChatMessage(role="user", content="x", extra_json="[1, 2")])),
        grpc.StatusCode.INVALID_ARGUMENT, "messages[0].extra_json")
    expect_error(lambda: stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(
        model=model, messages=[pb.ChatMessage(role="user", content="x")], tools_json="{}")),
        grpc.StatusCode.INVALID_ARGUMENT, "tools_json")
    # A template that raises: its own message, with line and column.
    details = expect_error(lambda: stub.ApplyChatTemplate(chat_request(
        mesh, mesh.model("acme/raising"), [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])),
        grpc.StatusCode.INVALID_ARGUMENT, "System role not supported", "acme/raising")
    assert re.search(r"line \d+, column \d+", details), details

    # After all that the service still answers, and counted nothing it refused.
    assert stub.Tokenize(pb.TokenizeRequest(model=model, texts=["still alive"])).encodings[0].ids
    assert mesh.preprocess.process.poll() is None


# --- the CLI through the service -----------------------------------------------------------------

def test_cli_tokenize_and_detokenize_through_the_service(mesh, tokenizer_fixtures):
    import subprocess  # noqa: PLC0415

    from tokenizers import Tokenizer  # noqa: PLC0415

    directory = tokenizer_fixtures / "smollm2"
    mesh.push(directory, "acme/smol")
    text = "Hello, wörld! 中文 😀"
    local = subprocess.run([str(binary("flotilla")), "tokenize", str(directory), "--text", text],
                           capture_output=True, text=True, timeout=60, check=True)
    remote = subprocess.run([str(binary("flotilla")), "tokenize", "acme/smol@main", "--text", text,
                             "--server", mesh.preprocess.grpc_address], capture_output=True, text=True, timeout=60)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    ids = Tokenizer.from_file(str(directory / "tokenizer.json")).encode(text).ids
    remote = subprocess.run([str(binary("flotilla")), "detokenize", "acme/smol", "--ids", ",".join(map(str, ids)),
                             "--server", mesh.preprocess.grpc_address], capture_output=True, text=True, timeout=60)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == text + "\n"
    missing = subprocess.run([str(binary("flotilla")), "tokenize", "acme/nope", "--text", "x",
                              "--server", mesh.preprocess.grpc_address], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "acme/nope" in missing.stderr
