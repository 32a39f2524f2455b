"""Registry replicas: two registry processes sharing one PostgreSQL database (--metadata_url) and
one S3 bucket (--blob_url, SeaweedFS checking every SigV4 signature), driven by real clients with
default settings: huggingface_hub (Xet uploads through hf_xet) and `flotilla push`.

What must hold: concurrent pushes through both replicas lose no commit and never mix two pushes'
files; a replica SIGKILLed mid-push leaves nothing half-written (no commit, no blob under blobs/)
and the retry through the other replica succeeds; garbage collection on one replica never deletes
what an upload on the other still needs (the grace period, see services/registry/README.md)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from conftest import binary, launch_service
from registry_fixtures import client_environment, postgres_server, run_python, seaweed_s3  # noqa: F401


@pytest.fixture
def shared_storage(postgres_server, seaweed_s3):  # noqa: F811
    return SimpleNamespace(metadata_url=postgres_server.new_database(), bucket=seaweed_s3.bucket,
                           prefix=seaweed_s3.new_prefix(), s3=seaweed_s3)


@pytest.fixture
def start_replica(tmp_path, shared_storage):
    """Starts a registry replica with its own data directory (partials and read cache) on the shared
    database and bucket; stops them all at the end."""
    started = []

    def start(label: str, *extra: str, env: dict | None = None):
        arguments = [f"--metadata_url={shared_storage.metadata_url}", f"--blob_url=s3://{shared_storage.bucket}/{shared_storage.prefix}",
                     f"--s3_endpoint={shared_storage.s3.endpoint}", *extra]
        process = launch_service("registry", tmp_path / label, arguments, env or shared_storage.s3.environment())
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tagged_bytes(tag: str, size: int) -> bytes:
    """Deterministic bytes that name their writer and round (so a mixed tree is visible)."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (tag.encode() + b"\n" + seed * (size // len(seed) + 1))[:size]


def write_round(folder: Path, prefix: str, tag: str) -> dict[str, bytes]:
    files = {f"{prefix}config.json": json.dumps({"writer": tag}).encode(),
             f"{prefix}weights.bin": tagged_bytes(tag, 300_000)}
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return files


def run_cli(process, *args, check=True) -> subprocess.CompletedProcess:
    command = [str(binary("flotilla")), *args, "--registry", process.grpc_address]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result


def test_concurrent_pushes_through_two_replicas_lose_nothing_and_mix_nothing(start_replica, shared_storage, stubs,
                                                                             tmp_path):
    replica_a = start_replica("replica_a")
    replica_b = start_replica("replica_b")
    rounds = 3
    hub_writers = {"hub-a": replica_a, "hub-b": replica_b}
    expected: dict[str, dict[str, str]] = {}  # tag → {path: sha256}
    folders = {}
    for writer in hub_writers:
        for round_index in range(rounds):
            folder = tmp_path / f"{writer}-{round_index}"
            folder.mkdir()
            tag = f"{writer}-{round_index}"
            expected[tag] = {path: sha256_of(data) for path, data in write_round(folder, f"by-{writer}/", tag).items()}
            folders[tag] = folder
    cli_writers = {"cli-a": replica_a, "cli-b": replica_b}
    for writer in cli_writers:
        for round_index in range(rounds):
            folder = tmp_path / f"{writer}-{round_index}"
            folder.mkdir()
            tag = f"{writer}-{round_index}"
            expected[tag] = {path: sha256_of(data) for path, data in write_round(folder, "", tag).items()}
            folders[tag] = folder

    # Each hub writer: create_repo (exist_ok) and three upload_folder commits onto acme/shared,
    # through its own replica: hub-a with the default environment (hf_xet: xorbs and shards),
    # hub-b with HF_HUB_DISABLE_XET=1 (LFS uploads).
    def hub_writer(writer: str, process) -> subprocess.CompletedProcess:
        transfer = "xet" if writer == "hub-a" else "http"
        uploads = "\n".join(
            f'api.upload_folder(folder_path="{folders[f"{writer}-{index}"]}", repo_id="acme/shared", '
            f'commit_message="{writer}-{index}")' for index in range(rounds))
        return run_python(f"""
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("acme/shared", exist_ok=True)
{uploads}
print("done")
""", client_environment(process, tmp_path / f"home-{writer}", transfer), check=False)

    # Each CLI writer: three `flotilla push`es of whole trees to its own repository, and one
    # push to acme/race, where the two CLI writers race (flotilla push refuses a moved branch).
    def cli_writer(writer: str, process) -> list[subprocess.CompletedProcess]:
        results = [run_cli(process, "push", str(folders[f"{writer}-{index}"]), f"acme/{writer}", check=False)
                   for index in range(rounds)]
        results.append(run_cli(process, "push", str(folders[f"{writer}-0"]), "acme/race", check=False))
        return results

    results: dict[str, object] = {}
    threads = [threading.Thread(target=lambda w=w, p=p: results.__setitem__(w, hub_writer(w, p)))
               for w, p in hub_writers.items()]
    threads += [threading.Thread(target=lambda w=w, p=p: results.__setitem__(w, cli_writer(w, p)))
                for w, p in cli_writers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for writer in hub_writers:
        assert results[writer].returncode == 0 and "done" in results[writer].stdout, results[writer].stderr[-3000:]
    for writer in cli_writers:
        for result in results[writer][:rounds]:
            assert result.returncode == 0, result.stderr

    # Both replicas answer the same heads; every commit of acme/shared is one whole hub push on
    # top of its parent (each writer's folder holds exactly one round, never half of two), and
    # all six pushes are there.
    commits_a = json.loads(run_cli(replica_a, "log", "acme/shared", "--json").stdout)["commits"]
    commits_b = json.loads(run_cli(replica_b, "log", "acme/shared", "--json").stdout)["commits"]
    assert commits_a == commits_b
    messages = [commit["message"].strip() for commit in commits_a]
    for writer in hub_writers:
        mine = [message for message in messages if message.startswith(writer)]
        assert sorted(mine) == [f"{writer}-{index}" for index in range(rounds)], messages
    stub = stubs.registry_pb2_grpc.RegistryServiceStub(replica_b.channel())
    for commit in commits_a:
        reference = stubs.common_pb2.ModelReference(namespace="acme", name="shared", revision=commit["commit_id"])
        listing = stub.ListFiles(stubs.registry_pb2.ListFilesRequest(reference=reference))
        tree = {entry.path: entry.sha256 for entry in listing.files}
        for writer in hub_writers:
            mine = {path: digest for path, digest in tree.items() if path.startswith(f"by-{writer}/")}
            if mine:
                assert any(mine == expected[f"{writer}-{index}"] for index in range(rounds)), (commit, mine)

    # The CLI repositories end at their last round, seen from the other replica.
    for writer, process in cli_writers.items():
        other = replica_b if process is replica_a else replica_a
        target = tmp_path / f"pulled-{writer}"
        run_cli(other, "pull", f"acme/{writer}", str(target))
        last = folders[f"{writer}-{rounds - 1}"]
        for path in expected[f"{writer}-{rounds - 1}"]:
            assert (target / path).read_bytes() == (last / path).read_bytes()
    # The race: one or both won in turn; a loser was refused (ABORTED), never half-applied.
    race = [results[writer][rounds] for writer in cli_writers]
    assert any(result.returncode == 0 for result in race)
    for result in race:
        assert result.returncode == 0 or "ABORTED" in result.stderr, result.stderr
    race_log = json.loads(run_cli(replica_a, "log", "acme/race", "--json").stdout)["commits"]
    assert len(race_log) == sum(result.returncode == 0 for result in race)

    # hub-a went through Xet: its xorbs are in the bucket, where either replica finds them.
    assert shared_storage.s3.keys(shared_storage.bucket, f"{shared_storage.prefix}/xet/xorbs/")

    # What hub writer A pushed through replica A downloads through replica B with hf_xet.
    download = run_python("""
from huggingface_hub import snapshot_download
print(snapshot_download("acme/shared"))
""", client_environment(replica_b, tmp_path / "fresh-home"))
    snapshot = Path(download.stdout.strip().splitlines()[-1])
    for writer in hub_writers:
        last = folders[f"{writer}-{rounds - 1}"]
        for path in expected[f"{writer}-{rounds - 1}"]:
            assert (snapshot / path).read_bytes() == (last / path).read_bytes()


def test_replica_sigkilled_mid_push_leaves_nothing_and_retry_through_the_other_succeeds(start_replica, shared_storage,
                                                                                        stubs, tmp_path):
    replica_a = start_replica("replica_a")
    # B sends blobs above 6 MiB as S3 multipart uploads (5 MiB parts), so the retry takes that path.
    replica_b = start_replica("replica_b", f"--s3_multipart_threshold_bytes={6 << 20}",
                              f"--s3_multipart_part_bytes={5 << 20}")
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    run_cli(replica_a, "push", str(source), "acme/crash")
    before = json.loads(run_cli(replica_b, "log", "acme/crash", "--json").stdout)["commits"]
    big = os.urandom(24 << 20)
    digest = sha256_of(big)

    # An upload into A that stalls after 8 MiB; A is SIGKILLed meanwhile.
    sent = threading.Event()
    release = threading.Event()

    def stalling_requests():
        for offset in range(0, len(big), 1 << 20):
            if offset == 8 << 20:
                sent.set()
                release.wait(60)
            chunk = big[offset:offset + (1 << 20)]
            if offset == 0:
                yield stubs.registry_pb2.UploadBlobRequest(sha256=digest, size=len(big), offset=0, namespace="acme",
                                                           name="crash", data=chunk)
            else:
                yield stubs.registry_pb2.UploadBlobRequest(data=chunk)

    stub_a = stubs.registry_pb2_grpc.RegistryServiceStub(replica_a.channel())
    outcome = []

    def call():
        try:
            outcome.append(stub_a.UploadBlob(stalling_requests(), timeout=120))
        except grpc.RpcError as error:
            outcome.append(error)

    worker = threading.Thread(target=call)
    worker.start()
    assert sent.wait(60)
    partial = replica_a.data_dir / "uploads" / f"{digest}.partial"
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size >= 4 << 20) and time.monotonic() < deadline:
        time.sleep(0.02)
    replica_a.process.send_signal(signal.SIGKILL)
    replica_a.process.wait()
    release.set()
    worker.join(timeout=120)
    assert outcome and isinstance(outcome[0], grpc.RpcError)

    # Nothing half-written is visible: the same head on B, no blob and no staged copy of the file.
    assert json.loads(run_cli(replica_b, "log", "acme/crash", "--json").stdout)["commits"] == before
    keys = shared_storage.s3.keys(shared_storage.bucket, f"{shared_storage.prefix}/")
    assert not [key for key in keys if digest in key], keys

    # The retry, `flotilla push` through B, succeeds; the file reads back whole through a restarted A.
    (source / "model.safetensors").write_bytes(big)
    run_cli(replica_b, "push", str(source), "acme/crash")
    restarted = start_replica("replica_a_restarted")
    target = tmp_path / "pulled"
    run_cli(restarted, "pull", "acme/crash", str(target))
    assert sha256_of((target / "model.safetensors").read_bytes()) == digest
    # Stored whole under its key, in 5 parts (a multipart upload's ETag ends with "-<parts>").
    head = shared_storage.s3.client().head_object(Bucket=shared_storage.bucket, Key=f"{shared_storage.prefix}/blobs/{digest}")
    assert head["ContentLength"] == len(big) and head["ETag"].strip('"').endswith("-5"), head["ETag"]


def test_gc_on_one_replica_spares_an_upload_the_other_is_about_to_commit(start_replica, shared_storage, stubs):
    # A keeps the default grace period (10 minutes); B collects with none, to show that collection
    # on S3 does delete what nothing references and no grace protects.
    replica_a = start_replica("replica_a")
    replica_b = start_replica("replica_b", "--gc_grace_seconds=0")
    stub_a = stubs.registry_pb2_grpc.RegistryServiceStub(replica_a.channel())
    stub_b = stubs.registry_pb2_grpc.RegistryServiceStub(replica_b.channel())
    stub_a.CreateRepository(stubs.registry_pb2.CreateRepositoryRequest(namespace="acme", name="gc", kind=1))
    data = os.urandom(200_000)

    def upload(stub):
        first = stubs.registry_pb2.UploadBlobRequest(sha256=sha256_of(data), size=len(data), offset=0,
                                                     namespace="acme", name="gc", data=data)
        return stub.UploadBlob(iter([first]))

    # Uploaded through B, not yet committed: GC on A (grace period) keeps it, the commit lands.
    upload(stub_b)
    report = stub_a.CollectGarbage(stubs.registry_pb2.CollectGarbageRequest())
    assert report.deleted_blobs == 0
    request = stubs.registry_pb2.CreateCommitRequest(namespace="acme", name="gc", branch="main", message="weights")
    request.files.add(path="weights.bin", size=len(data), sha256=sha256_of(data))
    stub_b.CreateCommit(request)
    # Now referenced: B's collection without a grace period keeps it too; an orphan goes.
    orphan = os.urandom(1000)
    first = stubs.registry_pb2.UploadBlobRequest(sha256=sha256_of(orphan), size=len(orphan), offset=0,
                                                 namespace="acme", name="gc", data=orphan)
    stub_a.UploadBlob(iter([first]))
    report = stub_b.CollectGarbage(stubs.registry_pb2.CollectGarbageRequest())
    assert (report.deleted_blobs, report.kept_blobs) == (1, 1)
    blobs = f"{shared_storage.prefix}/blobs/"
    assert set(shared_storage.s3.keys(shared_storage.bucket, blobs)) == {f"{blobs}{sha256_of(data)}"}


def test_bad_s3_credentials_fail_at_start_with_a_clear_error(shared_storage, tmp_path):
    environment = shared_storage.s3.environment()
    environment["AWS_SECRET_ACCESS_KEY"] = "wrong-secret"
    with pytest.raises(RuntimeError) as failure:
        launch_service("registry", tmp_path / "bad", [f"--blob_url=s3://{shared_storage.bucket}/{shared_storage.prefix}",
                                                      f"--s3_endpoint={shared_storage.s3.endpoint}"], environment)
    message = str(failure.value)
    assert "S3 blob store" in message and shared_storage.bucket in message and "403" in message, message
    assert "wrong-secret" not in message


@pytest.mark.parametrize("url, expected", [
    ("mysql://registry@db/flotilla", "--metadata_url: expected a postgresql:// URL"),
    ("postgresql://registry:s3cret@127.0.0.1:1/flotilla?connect_timeout=5", "connect to postgresql postgresql://registry:***@"),
])
def test_bad_metadata_url_fails_at_start_with_a_clear_error(tmp_path, url, expected):
    with pytest.raises(RuntimeError) as failure:
        launch_service("registry", tmp_path / "bad", [f"--metadata_url={url}"])
    assert expected in str(failure.value) and "s3cret" not in str(failure.value), str(failure.value)
