"""The Hugging Face Hub HTTP API, exercised by the real huggingface_hub and transformers clients
with HF_ENDPOINT pointing at a registry process."""
from __future__ import annotations

import json
import os
import time
import urllib.request

from registry_fixtures import hub_env, push_json, registry, run_cli, run_python, tiny_model_dir  # noqa: F401


def http(method: str, url: str, headers: dict | None = None, body: bytes | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_snapshot_download_and_hf_hub_download_match_pushed_files(registry, hub_env, tiny_model_dir):
    pushed = push_json(registry, tiny_model_dir, "acme/tiny-bert")
    run_cli(registry, "tag", "acme/tiny-bert", "v1")
    result = run_python(f"""
        import json, hashlib, os
        from huggingface_hub import snapshot_download, hf_hub_download, list_repo_refs, HfApi
        path = snapshot_download("acme/tiny-bert")
        files = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
        config = hf_hub_download("acme/tiny-bert", "config.json", revision="v1")
        refs = list_repo_refs("acme/tiny-bert")
        info = HfApi().model_info("acme/tiny-bert")
        print(json.dumps({{"path": path, "files": files, "config": open(config).read(),
                          "branches": [(b.name, b.target_commit) for b in refs.branches],
                          "tags": [(t.name, t.target_commit) for t in refs.tags], "sha": info.sha,
                          "siblings": sorted(s.rfilename for s in info.siblings)}}))
    """, hub_env)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    expected = sorted(p.name for p in tiny_model_dir.iterdir())
    assert answer["files"] == expected
    assert answer["siblings"] == expected
    assert answer["path"].endswith(pushed["commit_id"])
    assert answer["sha"] == pushed["commit_id"]
    assert json.loads(answer["config"]) == json.loads((tiny_model_dir / "config.json").read_text())
    assert answer["branches"] == [["main", pushed["commit_id"]]]
    assert answer["tags"] == [["v1", pushed["commit_id"]]]


def test_transformers_from_pretrained_downloads_from_flotilla(registry, hub_env, tiny_model_dir):
    push_json(registry, tiny_model_dir, "acme/tiny-bert")
    # The same model loaded from Flotilla and from the local folder gives the same tokens and outputs.
    result = run_python(f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        outputs = []
        for source in ["acme/tiny-bert", "{tiny_model_dir}"]:
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
            inputs = tokenizer("hello flotilla worlds", return_tensors="pt")
            with torch.no_grad():
                outputs.append((config.hidden_size, inputs["input_ids"], model(**inputs).last_hidden_state))
        (size, ids, hidden), (local_size, local_ids, local_hidden) = outputs
        print(size == local_size == 32, torch.equal(ids, local_ids), torch.equal(hidden, local_hidden))
    """, hub_env)
    assert result.stdout.strip().splitlines()[-1] == "True True True"


def test_tree_paging_stays_on_registry_host(start_service, tmp_path, tiny_model_dir):
    registry_process = start_service("registry", "--hub_tree_page_size=2")
    push_json(registry_process, tiny_model_dir, "acme/paged")
    status, headers, body = http("GET", registry_process.http_url("/api/models/acme/paged/tree/main?recursive=true"))
    assert status == 200 and len(json.loads(body)) == 2
    link = headers["Link"]
    assert link.startswith(f"<http://{registry_process.http_address}/api/models/acme/paged/tree/") and 'rel="next"' in link
    environment = {"HF_ENDPOINT": registry_process.http_url(), "HF_HOME": str(tmp_path / "hf")}
    # CI exports HF_HUB_OFFLINE=1 so that nothing reaches the internet; the registry is on loopback.
    inherited = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    result = run_python("""
        from huggingface_hub import HfApi
        print(sorted(f.path for f in HfApi().list_repo_tree("acme/paged", recursive=True)))
    """, {**inherited, **environment})
    assert result.stdout.strip().splitlines()[-1] == str(sorted(p.name for p in tiny_model_dir.iterdir()))


def test_resolve_headers_range_and_errors(registry, tiny_model_dir):
    pushed = push_json(registry, tiny_model_dir, "acme/tiny-bert")
    config = (tiny_model_dir / "config.json").read_bytes()
    status, headers, _ = http("HEAD", registry.http_url("/acme/tiny-bert/resolve/main/config.json"),
                              {"Accept-Encoding": "identity"})
    assert status == 200
    assert headers["X-Repo-Commit"] == pushed["commit_id"]
    assert headers["X-Linked-Size"] == str(len(config)) and headers["Content-Length"] == str(len(config))
    assert len(headers["ETag"].strip('"')) == 64 and headers["X-Linked-Etag"] == headers["ETag"]
    # Every file is also served through the Xet CAS (test_xet.py): once its Xet view is built (in
    # the background after the first request), the HEAD names its Xet hash and where a read token
    # comes from.
    deadline = time.monotonic() + 60
    while "X-Xet-Hash" not in headers and time.monotonic() < deadline:
        time.sleep(0.05)
        headers = http("HEAD", registry.http_url("/acme/tiny-bert/resolve/main/config.json"))[1]
    assert len(headers["X-Xet-Hash"]) == 64
    assert headers["Link"].endswith(f'/api/models/acme/tiny-bert/xet-read-token/{pushed["commit_id"]}>; rel="xet-auth"')
    status, headers, body = http("GET", registry.http_url("/acme/tiny-bert/resolve/main/config.json"),
                                 {"Range": "bytes=10-"})
    assert status == 206 and body == config[10:]
    assert headers["Content-Range"] == f"bytes 10-{len(config) - 1}/{len(config)}"
    for url, code in [("/acme/missing/resolve/main/config.json", "RepoNotFound"),
                      ("/acme/tiny-bert/resolve/nope/config.json", "RevisionNotFound"),
                      ("/acme/tiny-bert/resolve/main/nope.json", "EntryNotFound"),
                      ("/api/models/acme/missing", "RepoNotFound"),
                      ("/api/models/acme/tiny-bert/revision/nope", "RevisionNotFound")]:
        status, headers, _ = http("GET", registry.http_url(url))
        assert status == 404, url
        assert headers["X-Error-Code"] == code, url
        assert headers["X-Error-Message"], url
    _, _, info = http("GET", registry.http_url("/api/models/acme/tiny-bert"))
    assert "xetHash" not in info.decode()


def test_client_raises_named_errors(registry, hub_env, tiny_model_dir):
    push_json(registry, tiny_model_dir, "acme/tiny-bert")
    result = run_python("""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        for kwargs, error in [(dict(repo_id="acme/missing", filename="config.json"), RepositoryNotFoundError),
                              (dict(repo_id="acme/tiny-bert", filename="config.json", revision="nope"), RevisionNotFoundError),
                              (dict(repo_id="acme/tiny-bert", filename="nope.json"), EntryNotFoundError)]:
            try:
                hf_hub_download(**kwargs)
            except error:
                print("ok", error.__name__)
    """, hub_env)
    assert result.stdout.split().count("ok") == 3, result.stdout + result.stderr


def test_create_repo_and_upload_folder_with_real_client(registry, hub_env, tiny_model_dir, tmp_path):
    result = run_python(f"""
        from huggingface_hub import HfApi, snapshot_download
        api = HfApi()
        url = api.create_repo("acme/uploaded")
        again = api.create_repo("acme/uploaded", exist_ok=True)
        first = api.upload_folder(folder_path="{tiny_model_dir}", repo_id="acme/uploaded", commit_message="weights")
        second = api.upload_file(path_or_fileobj=b"# tiny", path_in_repo="docs/README.md", repo_id="acme/uploaded")
        api.delete_file("tokenizer_config.json", repo_id="acme/uploaded")
        path = snapshot_download("acme/uploaded", revision=second.oid)
        import os
        print(len(first.oid), sorted(os.listdir(path)))
    """, hub_env)
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("40 ")
    assert "docs" in line and "tokenizer_config.json" in line
    listing = json.loads(run_cli(registry, "ls", "acme/uploaded", "--json").stdout)
    paths = sorted(f["path"] for f in listing["files"])
    assert "tokenizer_config.json" not in paths and "docs/README.md" in paths and "model.safetensors" in paths
    history = json.loads(run_cli(registry, "log", "acme/uploaded", "--json").stdout)["commits"]
    assert len(history) == 3 and history[-1]["message"] == "weights"
