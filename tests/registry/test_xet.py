"""The registry's Xet CAS, driven by the real huggingface_hub / hf_xet / transformers clients in
their default environment (no HF_HUB_DISABLE_XET), and by hand-made objects (xet_objects.py) for
the bad-input cases. See services/registry/xet_api.h for the routes."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import xet_objects
from conftest import launch_service
from registry_fixtures import (client_environment, metadata_args, postgres_server, push_json, registry,  # noqa: F401
                               registry_on_each_backend, run_cli, run_python, tiny_model_dir)


def http(method: str, url: str, headers: dict | None = None, body: bytes | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def cas_token(registry_process, repository: str, kind: str = "write", token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, response_headers, body = http("GET", registry_process.http_url(f"/api/models/{repository}/xet-{kind}-token/main"),
                                          headers)
    assert status == 200, body
    info = json.loads(body)
    assert response_headers["X-Xet-Access-Token"] == info["accessToken"]
    assert response_headers["X-Xet-Cas-Url"] == info["casUrl"]
    return info


def create_repository(registry_process, repository: str, token: str | None = None) -> None:
    namespace_name, name = repository.split("/")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    status, _, body = http("POST", registry_process.http_url("/api/repos/create"), headers,
                           json.dumps({"name": name, "organization": namespace_name, "type": "model"}).encode())
    assert status == 200, body


def metric(registry_process, name: str, labels: str) -> float:
    _, _, body = http("GET", registry_process.http_url("/metrics"))
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", body.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def xorb_files(registry_process) -> list[Path]:
    return [p for p in (registry_process.data_dir / "xet" / "xorbs").rglob("*") if p.is_file() and p.parent.name != "tmp"]


def same_bytes(left: Path, right: Path) -> bool:
    return left.read_bytes() == right.read_bytes()


@pytest.fixture
def model_folder(tiny_model_dir, tmp_path) -> Path:
    """The tiny BERT plus a 3 MiB random file (dozens of chunks) and an empty file."""
    folder = tmp_path / "model"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 4321))
    (folder / "empty.txt").write_bytes(b"")
    return folder


def test_upload_and_download_through_xet_round_trip(registry_on_each_backend, model_folder, tmp_path):
    registry = registry_on_each_backend  # the Xet tables in SQLite and in PostgreSQL
    environment = client_environment(registry, tmp_path / "hf_home")
    result = run_python(f"""
        from huggingface_hub import HfApi, CommitOperationAdd, CommitOperationDelete
        api = HfApi()
        api.create_repo("acme/xet")
        api.upload_folder(folder_path="{model_folder}", repo_id="acme/xet", commit_message="weights")
        api.upload_file(path_or_fileobj=b"# notes", path_in_repo="docs/README.md", repo_id="acme/xet")
        api.create_commit("acme/xet", operations=[
            CommitOperationAdd("extra/copy.bin", "{model_folder}/weights.bin"),
            CommitOperationDelete("tokenizer_config.json")], commit_message="add and delete")
        print("done")
    """, environment)
    assert "done" in result.stdout
    assert xorb_files(registry), "no xorb was uploaded: the client did not go through Xet"
    assert metric(registry, "flotilla_registry_bytes_received_total", 'api="xet"') > 3 * 1024 * 1024

    download_environment = client_environment(registry, tmp_path / "fresh_home")
    result = run_python("""
        from huggingface_hub import snapshot_download, hf_hub_download
        print(snapshot_download("acme/xet"))
        print(hf_hub_download("acme/xet", "extra/copy.bin"))
    """, download_environment)
    snapshot, copy = result.stdout.strip().splitlines()[-2:]
    snapshot = Path(snapshot)
    for item in model_folder.iterdir():
        if item.name == "tokenizer_config.json":
            assert not (snapshot / item.name).exists()
        else:
            assert same_bytes(item, snapshot / item.name), item.name
    assert (snapshot / "docs" / "README.md").read_bytes() == b"# notes"
    assert same_bytes(model_folder / "weights.bin", Path(copy))
    assert metric(registry, "flotilla_registry_pulls_total", 'api="xet"') >= 1

    # One store, two views: the same files through the registry's own client.
    target = tmp_path / "pulled"
    run_cli(registry, "pull", "acme/xet", str(target))
    assert same_bytes(model_folder / "weights.bin", target / "weights.bin")
    assert same_bytes(model_folder / "weights.bin", target / "extra" / "copy.bin")


def bytes_on_disk(registry_process) -> dict[str, int]:
    """Bytes of file content under the registry's blobs/ and xet/xorbs/ (databases and partial uploads apart)."""
    return {folder: sum(p.stat().st_size for p in (registry_process.data_dir / folder).rglob("*") if p.is_file())
            for folder in ("blobs", "xet/xorbs")}


def cas_range(registry_process, repository: str, file_hash: str, first: int, last: int) -> bytes:
    """Bytes [first, last] of a file through the CAS as hf_xet reads them: the reconstruction API with
    Range, then each fetch URL with its url_range. Decodes uncompressed chunks only (8-byte header,
    type 0), which is what random bytes are stored as."""
    token = cas_token(registry_process, repository, "read")
    status, _, body = http("GET", f"{token['casUrl']}/v1/reconstructions/{file_hash}",
                           {"Authorization": f"Bearer {token['accessToken']}", "Range": f"bytes={first}-{last}"})
    assert status == 200, body
    plan = json.loads(body)
    out = bytearray()
    for term in plan["terms"]:
        fetch = next(f for f in plan["fetch_info"][term["hash"]]
                     if f["range"]["start"] <= term["range"]["start"] and term["range"]["end"] <= f["range"]["end"])
        status, _, data = http("GET", fetch["url"], {"Range": f"bytes={fetch['url_range']['start']}-{fetch['url_range']['end']}"})
        assert status == 206
        chunks, position = [], 0
        while position < len(data):
            size, scheme = int.from_bytes(data[position + 1:position + 4], "little"), data[position + 4]
            assert scheme == 0, "random bytes are stored uncompressed"
            chunks.append(data[position + 8:position + 8 + size])
            position += 8 + size
        skip = term["range"]["start"] - fetch["range"]["start"]
        out += b"".join(chunks[skip:skip + term["range"]["end"] - term["range"]["start"]])
    offset = plan["offset_into_first_range"]
    return bytes(out[offset:offset + last - first + 1])


def test_xet_upload_is_stored_once_and_every_view_returns_its_bytes(registry_on_each_backend, stubs, tmp_path):
    """Note [One store, two views]: a file uploaded through hf_xet is kept once, as its xorbs' chunks,
    and /resolve/ (whole and Range), gRPC DownloadFile (from offsets), `flotilla pull`, hf_xet's own
    download and the CAS reconstruction with Range all return its bytes. Random bytes (stored
    uncompressed) then text hf_xet compresses, so both ways of reading chunks are exercised."""
    registry = registry_on_each_backend
    text = b"".join(b"layer %d: attention weights, mlp weights, norms; " % (i % 1000) for i in range(120000))
    payload = os.urandom(12 * 1024 * 1024 + 777) + text[:5 * 1024 * 1024]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(payload)
    before = bytes_on_disk(registry)
    run_python(f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("acme/once")
        api.upload_file(path_or_fileobj="{folder}/model.safetensors", path_in_repo="model.safetensors", repo_id="acme/once")
    """, client_environment(registry, tmp_path / "hf_home"))
    after = bytes_on_disk(registry)
    stored = {folder: after[folder] - before[folder] for folder in after}
    print(f"stored once: {len(payload)} bytes uploaded, on disk {stored}")
    assert stored["blobs"] == 0, "no whole-file copy beside the xorbs"
    # The random 12 MiB stay as they are; the text compresses: about one copy, never two.
    assert 12 * 1024 * 1024 < stored["xet/xorbs"] < 1.05 * len(payload)

    url = registry.http_url("/acme/once/resolve/main/model.safetensors")
    status, headers, body = http("GET", url)
    assert status == 200 and body == payload
    file_hash = headers.get("X-Xet-Hash") or http("HEAD", url)[1]["X-Xet-Hash"]
    boundaries = [0, 1, 65535, 65536, 4 * 1024 * 1024 - 3, 12 * 1024 * 1024 + 700, len(payload) - 10]
    for first in boundaries:
        for length in (1, 100, 70000, 5 * 1024 * 1024):
            last = min(first + length, len(payload)) - 1
            status, _, body = http("GET", url, {"Range": f"bytes={first}-{last}"})
            assert status == 206 and body == payload[first:last + 1], (first, length)
    status, _, body = http("GET", url, {"Range": "bytes=-1000"})
    assert status == 206 and body == payload[-1000:]
    for first, last in ((0, 99), (65000, 200000), (5 * 1024 * 1024 + 1, 9 * 1024 * 1024)):
        assert cas_range(registry, "acme/once", file_hash, first, last) == payload[first:last + 1]

    stub = stubs.registry_pb2_grpc.RegistryServiceStub(registry.channel())
    for offset in (0, 1, 131071, 12 * 1024 * 1024, len(payload) - 1, len(payload)):
        chunks = stub.DownloadFile(stubs.registry_pb2.DownloadFileRequest(
            reference=stubs.common_pb2.ModelReference(namespace="acme", name="once"), path="model.safetensors",
            offset=offset))
        assert b"".join(c.data for c in chunks) == payload[offset:], offset
    target = tmp_path / "pulled"
    run_cli(registry, "pull", "acme/once", str(target))  # verifies the sha256 itself
    assert (target / "model.safetensors").read_bytes() == payload
    result = run_python("""
        from huggingface_hub import hf_hub_download
        print(hf_hub_download("acme/once", "model.safetensors"))
    """, client_environment(registry, tmp_path / "reader"))
    assert Path(result.stdout.strip().splitlines()[-1]).read_bytes() == payload
    # A push of the same bytes finds them stored and sends nothing.
    pushed = push_json(registry, folder, "acme/again")
    assert pushed["uploaded_bytes"] == 0, pushed


def test_xet_hash_advertised_equals_hf_xet_hash_for_pushed_files(registry, model_folder, tmp_path):
    push_json(registry, model_folder, "acme/pushed")
    # The first HEAD is answered over plain HTTP and starts building the file's Xet view.
    status, headers, _ = http("HEAD", registry.http_url("/acme/pushed/resolve/main/weights.bin"))
    assert status == 200
    deadline = time.monotonic() + 60
    while "X-Xet-Hash" not in headers and time.monotonic() < deadline:
        time.sleep(0.05)
        headers = http("HEAD", registry.http_url("/acme/pushed/resolve/main/weights.bin"))[1]
    import hf_xet  # noqa: PLC0415
    expected = hf_xet.hash_files([str(model_folder / "weights.bin")])[0].hash
    assert headers["X-Xet-Hash"] == expected
    assert 'rel="xet-auth"' in headers["Link"]
    result = run_python("""
        from huggingface_hub import hf_hub_download
        print(hf_hub_download("acme/pushed", "weights.bin"))
    """, client_environment(registry, tmp_path / "hf_home"))
    assert same_bytes(model_folder / "weights.bin", Path(result.stdout.strip().splitlines()[-1]))
    assert metric(registry, "flotilla_registry_pulls_total", 'api="xet"') >= 1
    # Note [One store, two views]: the view's xorbs replaced the pushed blob (one copy on disk), and
    # the registry's own client reads the file from them.
    digest = hashlib.sha256((model_folder / "weights.bin").read_bytes()).hexdigest()
    assert not list((registry.data_dir / "blobs").rglob(digest))
    size = (model_folder / "weights.bin").stat().st_size
    assert size < bytes_on_disk(registry)["xet/xorbs"] < 1.05 * size
    target = tmp_path / "pulled"
    run_cli(registry, "pull", "acme/pushed", str(target))
    for item in model_folder.iterdir():
        assert same_bytes(item, target / item.name), item.name


def test_hf_cli_upload_and_download(registry, model_folder, tmp_path):
    environment = client_environment(registry, tmp_path / "hf_home")
    upload = subprocess.run(["hf", "upload", "acme/cli", str(model_folder), "."], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert upload.returncode == 0, upload.stderr
    target = tmp_path / "downloaded"
    download = subprocess.run(["hf", "download", "acme/cli", "--local-dir", str(target)], capture_output=True,
                              text=True, env=client_environment(registry, tmp_path / "other_home"), timeout=300)
    assert download.returncode == 0, download.stderr
    for item in model_folder.iterdir():
        assert same_bytes(item, target / item.name), item.name
    assert xorb_files(registry)


def test_transformers_push_to_hub_and_from_pretrained(registry, tiny_model_dir, tmp_path):
    result = run_python(f"""
        import torch
        from transformers import BertModel
        model = BertModel.from_pretrained("{tiny_model_dir}")
        model.push_to_hub("acme/pushed-bert")
        again = BertModel.from_pretrained("acme/pushed-bert")
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        print("same", same)
    """, client_environment(registry, tmp_path / "hf_home"))
    assert "same True" in result.stdout
    assert xorb_files(registry)


def test_bad_objects_are_refused_and_nothing_is_stored(registry_on_each_backend):
    registry = registry_on_each_backend
    create_repository(registry, "acme/target")
    token = cas_token(registry, "acme/target")
    cas, auth = token["casUrl"], {"Authorization": f"Bearer {token['accessToken']}"}
    chunks = [os.urandom(1000), os.urandom(2000)]
    xorb_hash, body = xet_objects.xorb(chunks)
    name = xet_objects.hash_string(xorb_hash)

    # A xorb uploaded under another hash, and one with a corrupted chunk.
    wrong = xet_objects.hash_string(bytes(32))
    assert http("POST", f"{cas}/v1/xorbs/default/{wrong}", auth, body)[0] == 400
    corrupted = bytearray(body)
    corrupted[20] ^= 0xFF
    status, _, message = http("POST", f"{cas}/v1/xorbs/default/{name}", auth, bytes(corrupted))
    assert status == 400 and b"hashes to" in message
    truncated = body[:-10]
    assert http("POST", f"{cas}/v1/xorbs/default/{name}", auth, truncated)[0] == 400
    assert not xorb_files(registry)

    # An oversized xorb is refused from its declared length.
    status, _, _ = http("POST", f"{cas}/v1/xorbs/default/{name}", {**auth, "Content-Length": str(200 << 20)}, b"")
    assert status in (400, 413)

    # Tokens: none, forged, read-only.
    assert http("POST", f"{cas}/v1/xorbs/default/{name}", {}, body)[0] == 401
    assert http("POST", f"{cas}/v1/xorbs/default/{name}", {"Authorization": "Bearer forged.00"}, body)[0] == 401
    read_token = cas_token(registry, "acme/target", "read")
    assert http("POST", f"{cas}/v1/xorbs/default/{name}",
                {"Authorization": f"Bearer {read_token['accessToken']}"}, body)[0] == 403
    assert not xorb_files(registry)

    # The good xorb goes in once.
    status, _, answer = http("POST", f"{cas}/v1/xorbs/default/{name}", auth, body)
    assert status == 200 and json.loads(answer) == {"was_inserted": True}
    assert json.loads(http("POST", f"{cas}/v1/xorbs/default/{name}", auth, body)[2]) == {"was_inserted": False}

    data = b"".join(chunks)
    sha256 = hashlib.sha256(data).digest()
    good_shard = xet_objects.shard([(chunks, xorb_hash, sha256)], [(xorb_hash, chunks)])
    # Truncated and corrupt shards, a shard naming a missing xorb, a chunk hash mismatch, a wrong sha256.
    assert http("POST", f"{cas}/v1/shards", auth, good_shard[:-30])[0] == 400
    assert http("POST", f"{cas}/v1/shards", auth, b"\x00" * 20 + good_shard[20:])[0] == 400
    missing_hash, _ = xet_objects.xorb([b"never uploaded"])
    assert http("POST", f"{cas}/v1/shards", auth,
                xet_objects.shard([([b"never uploaded"], missing_hash, sha256)], []))[0] == 400
    assert http("POST", f"{cas}/v1/shards", auth,
                xet_objects.shard([], [(xorb_hash, [chunks[0], os.urandom(2000)])]))[0] == 400
    assert http("POST", f"{cas}/v1/shards", auth,
                xet_objects.shard([(chunks, xorb_hash, hashlib.sha256(b"other").digest())], []))[0] == 400
    assert not list((registry.data_dir / "blobs").rglob(hashlib.sha256(data).hexdigest()))

    status, _, answer = http("POST", f"{cas}/v1/shards", auth, good_shard)
    assert status == 200 and json.loads(answer)["result"] == 1
    # Recorded as its chunks (Note [One store, two views]): no whole-file blob beside the xorb.
    assert not list((registry.data_dir / "blobs").rglob(hashlib.sha256(data).hexdigest()))

    # Reconstruction: this repository's token, with a Range; another repository's token is refused.
    file_name = xet_objects.hash_string(xet_objects.file_hash(chunks))
    read_auth = {"Authorization": f"Bearer {read_token['accessToken']}"}
    status, _, answer = http("GET", f"{cas}/v1/reconstructions/{file_name}", {**read_auth, "Range": "bytes=1500-2999"})
    assert status == 200, answer
    plan = json.loads(answer)
    assert plan["offset_into_first_range"] == 500 and len(plan["terms"]) == 1
    assert plan["terms"][0]["range"] == {"start": 1, "end": 2}
    fetch = plan["fetch_info"][name][0]
    status, _, piece = http("GET", fetch["url"], {"Range": f"bytes={fetch['url_range']['start']}-{fetch['url_range']['end']}"})
    assert status == 206 and piece[8:] == chunks[1]
    assert http("GET", fetch["url"].replace("signature=", "signature=00"))[0] == 403
    assert http("GET", f"{cas}/v1/reconstructions/{file_name}", {**read_auth, "Range": "bytes=9999-"})[0] == 416
    create_repository(registry, "acme/other")
    other = cas_token(registry, "acme/other", "read")
    assert http("GET", f"{cas}/v1/reconstructions/{file_name}",
                {"Authorization": f"Bearer {other['accessToken']}"})[0] == 403


def test_expired_and_unauthorised_tokens(start_service):
    registry_process = start_service("registry", "--xet_token_seconds=1", "--token=secret-w:writer:acme:write,secret-r:reader:acme:read",
                                     "--anonymous_read=false")
    create_repository(registry_process, "acme/locked", token="secret-w")
    assert http("GET", registry_process.http_url("/api/models/acme/locked/xet-write-token/main"))[0] == 401
    assert http("GET", registry_process.http_url("/api/models/acme/locked/xet-write-token/main"),
                {"Authorization": "Bearer secret-r"})[0] == 403
    token = cas_token(registry_process, "acme/locked", "write", token="secret-w")
    xorb_hash, body = xet_objects.xorb([b"expiring"])
    time.sleep(2.1)
    status, _, message = http("POST", f"{token['casUrl']}/v1/xorbs/default/{xet_objects.hash_string(xorb_hash)}",
                              {"Authorization": f"Bearer {token['accessToken']}"}, body)
    assert status == 401 and b"expired" in message
    assert not xorb_files(registry_process)


def test_reupload_with_one_tensor_changed_sends_and_stores_about_that_tensor(registry, tmp_path):
    """Dedup: a checkpoint of eight 4 MiB tensors, then the same with one tensor changed, uploaded by
    a second client with an empty HF_HOME (so it has no local shard cache): the registry's global
    dedup answers let it send, and the registry store, about the changed tensor only."""
    code = f"""
        import os, pathlib, re, sys, urllib.request
        import torch
        from safetensors.torch import save_file
        from huggingface_hub import HfApi
        def received():
            body = urllib.request.urlopen("{registry.http_url('/metrics')}").read().decode()
            match = re.search(r'^flotilla_registry_bytes_received_total\\{{api="xet"\\}} (\\S+)$', body, re.M)
            return float(match.group(1)) if match else 0.0
        def stored():  # every copy: blobs and xorbs
            return sum(p.stat().st_size for folder in ("blobs", "xet/xorbs")
                       for p in pathlib.Path("{registry.data_dir}", folder).rglob("*") if p.is_file())
        torch.manual_seed(0)
        tensors = {{f"model.layers.{{i}}.mlp.weight": torch.randn(1024, 1024) for i in range(8)}}
        step = STEP
        if step == 1:
            tensors["model.layers.3.mlp.weight"] = torch.randn(1024, 1024)
        folder = f"{tmp_path}/checkpoint{{step}}"
        os.makedirs(folder)
        save_file(tensors, folder + "/model.safetensors")
        api = HfApi()
        api.create_repo("acme/finetuned", exist_ok=True)
        sent_before, stored_before = received(), stored()
        api.upload_folder(folder_path=folder, repo_id="acme/finetuned")
        print("upload", int(received() - sent_before), int(stored() - stored_before))
    """
    uploads = []
    for step in (0, 1):
        result = run_python(code.replace("STEP", str(step)), client_environment(registry, tmp_path / f"home{step}"))
        line = [line for line in result.stdout.splitlines() if line.startswith("upload ")][-1]
        uploads.append((int(line.split()[1]), int(line.split()[2])))
    tensor_bytes = 4 * 1024 * 1024
    (first_sent, first_stored), (second_sent, second_stored) = uploads
    print(f"dedup: first upload sent {first_sent} stored {first_stored}; "
          f"second sent {second_sent} stored {second_stored} (changed tensor {tensor_bytes})")
    assert first_sent > 6 * tensor_bytes
    assert 0.5 * tensor_bytes < second_sent < 1.5 * tensor_bytes
    assert second_stored < 1.5 * tensor_bytes
    # Both revisions download whole.
    result = run_python("""
        from huggingface_hub import HfApi, hf_hub_download
        commits = HfApi().list_repo_commits("acme/finetuned")
        for commit in commits[:2]:
            print(hf_hub_download("acme/finetuned", "model.safetensors", revision=commit.commit_id))
    """, client_environment(registry, tmp_path / "reader"))
    paths = result.stdout.strip().splitlines()[-2:]
    assert Path(paths[0]).read_bytes() == (tmp_path / "checkpoint1" / "model.safetensors").read_bytes()
    assert Path(paths[1]).read_bytes() == (tmp_path / "checkpoint0" / "model.safetensors").read_bytes()


def test_sigkilled_mid_upload_leaves_nothing_half_visible_and_retry_completes(tmp_path):
    services = tmp_path / "services"
    registry_process = launch_service("registry", services)
    big = tmp_path / "model"
    big.mkdir()
    payload = os.urandom(96 * 1024 * 1024)
    (big / "model.safetensors").write_bytes(payload)
    upload_code = f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("acme/killed", exist_ok=True)
        api.upload_folder(folder_path="{big}", repo_id="acme/killed")
        print("uploaded")
    """
    environment = client_environment(registry_process, tmp_path / "hf_home")
    client = subprocess.Popen([sys.executable, "-c", __import__("textwrap").dedent(upload_code)], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill the registry once the first xorb landed: the upload is under way, no shard or commit yet
    # (on a machine fast enough to finish first, the checks below hold all the same).
    deadline = time.monotonic() + 120
    while not xorb_files(registry_process) and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    registry_process.process.send_signal(signal.SIGKILL)
    registry_process.process.wait()
    client.kill()
    client.wait()

    restarted = launch_service("registry", services)
    try:
        status, _, body = http("GET", restarted.http_url("/api/models/acme/killed"))
        if status == 200:
            siblings = json.loads(body)["siblings"]
            # Either no commit yet, or the whole file.
            assert siblings == [] or siblings[0]["size"] == len(payload)
        assert not list((restarted.data_dir / "xet" / "xorbs" / "tmp").iterdir())
        # The retry is a new client process with its own HF_HOME: hf_xet keeps upload-session
        # metadata there, and what the killed session left is the client's business, not the
        # registry's. (This test once failed now and then: hf_xet fills a xorb of incompressible
        # data to 64 MiB of chunks, and the registry counted the chunk headers against that limit.)
        result = run_python(upload_code, client_environment(restarted, tmp_path / "retry_home"))
        assert "uploaded" in result.stdout
        target = tmp_path / "pulled"
        run_cli(restarted, "pull", "acme/killed", str(target))
        assert (target / "model.safetensors").read_bytes() == payload
    finally:
        restarted.stop()


def test_garbage_collection_walks_chunk_references(start_service, tmp_path):
    registry_process = start_service("registry", "--gc_grace_seconds=0")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    environment = client_environment(registry_process, tmp_path / "hf_home")
    run_python(f"""
        from huggingface_hub import HfApi
        api = HfApi()
        for name in ("acme/one", "acme/two"):
            api.create_repo(name)
            api.upload_folder(folder_path="{folder}", repo_id=name)
    """, environment)
    stored = xorb_files(registry_process)
    assert stored
    # Still referenced by acme/two: nothing goes.
    run_cli(registry_process, "rm", "acme/one")
    run_cli(registry_process, "gc")
    assert xorb_files(registry_process) == stored
    run_cli(registry_process, "rm", "acme/two")
    run_cli(registry_process, "gc")
    assert not xorb_files(registry_process)


def test_flotilla_repush_sends_only_changed_chunks_and_pushed_files_download_through_xet(registry, tmp_path):
    """`flotilla push` chunks large files with the Xet chunker (Note [Chunked push] in
    registry_client.cc): a re-push after a small edit sends a few chunks, and the result is the
    same file for every reader."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    weights = bytearray(os.urandom(12 * 1024 * 1024))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    first = push_json(registry, folder, "acme/tuned")
    assert first["uploaded_bytes"] >= len(weights)
    weights[6 * 1024 * 1024: 6 * 1024 * 1024 + 4096] = os.urandom(4096)
    (folder / "model.safetensors").write_bytes(weights)
    second = push_json(registry, folder, "acme/tuned")
    assert second["uploaded_bytes"] < 512 * 1024, second
    assert second["skipped_bytes"] > len(weights) - 512 * 1024
    target = tmp_path / "pulled"
    run_cli(registry, "pull", "acme/tuned", str(target))
    assert (target / "model.safetensors").read_bytes() == bytes(weights)
    result = run_python("""
        from huggingface_hub import hf_hub_download
        print(hf_hub_download("acme/tuned", "model.safetensors"))
    """, client_environment(registry, tmp_path / "hf_home"))
    assert Path(result.stdout.strip().splitlines()[-1]).read_bytes() == bytes(weights)
