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
