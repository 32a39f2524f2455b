"""Shared pytest fixtures: where the build is, Python gRPC stubs for flotilla.v1, and real service
processes on free loopback ports.

    def test_something(start_service, stubs):
        registry = start_service("registry")
        stub = stubs.registry_pb2_grpc.RegistryServiceStub(registry.channel())

Binaries come from $FLOTILLA_BUILD_DIR/bin (default: build/bin beside this repository).
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
BUILD_DIR = Path(os.environ.get("FLOTILLA_BUILD_DIR", REPOSITORY / "build")).resolve()
BIN_DIR = BUILD_DIR / "bin"


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} does not exist: build first (cmake --build {BUILD_DIR})")
    return path


@pytest.fixture(scope="session")
def stubs(tmp_path_factory) -> SimpleNamespace:
    """flotilla.v1 Python modules generated from proto/ with grpcio-tools, once per session."""
    from grpc_tools import protoc  # noqa: PLC0415

    output = tmp_path_factory.mktemp("python_stubs")
    protos = sorted(str(p.relative_to(REPOSITORY / "proto")) for p in (REPOSITORY / "proto").rglob("*.proto"))
    protos = [p for p in protos if not p.startswith("grpc/")]  # grpcio-health-checking ships its own
    result = protoc.main(["protoc", f"-I{REPOSITORY / 'proto'}", f"--python_out={output}",
                          f"--grpc_python_out={output}", *protos])
    assert result == 0, "grpc_tools.protoc failed"
    sys.path.insert(0, str(output))
    modules = {}
    for proto in protos:
        module = proto.removesuffix(".proto").replace("/", ".")
        stem = module.rsplit(".", 1)[1]
        modules[f"{stem}_pb2"] = importlib.import_module(f"{module}_pb2")
        modules[f"{stem}_pb2_grpc"] = importlib.import_module(f"{module}_pb2_grpc")
    return SimpleNamespace(**modules)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen
    grpc_address: str
    http_address: str
    log_path: Path
    data_dir: Path
    _channels: list = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.grpc_address)
        self._channels.append(channel)
        return channel

    def http_url(self, path: str = "") -> str:
        return f"http://{self.http_address}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        for channel in self._channels:
            channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_service(name: str, directory: Path, extra_args=(), env=None, timeout: float = 60) -> ServiceProcess:
    """Starts build/bin/flotilla-<name> on free loopback ports and waits for its ready file."""
    directory.mkdir(parents=True, exist_ok=True)
    ready_file = directory / f"{name}.ready"
    log_path = directory / f"{name}.log"
    data_dir = directory / f"{name}-data"
    ready_file.unlink(missing_ok=True)
    command = [str(binary(f"flotilla-{name}")), "--grpc_listen=127.0.0.1:0", "--http_listen=127.0.0.1:0",
               f"--data_dir={data_dir}", f"--ready_file={ready_file}", *extra_args]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} not ready after {timeout}s: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    ready = json.loads(ready_file.read_text())
    return ServiceProcess(name, process, ready["grpc_address"], ready["http_address"], log_path, data_dir)


@pytest.fixture
def start_service(tmp_path):
    """Starts services for one test and stops (SIGTERM) them at its end."""
    started: list[ServiceProcess] = []

    def start(name: str, *extra_args: str, env=None) -> ServiceProcess:
        service = launch_service(name, tmp_path / "services", extra_args, env)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()
