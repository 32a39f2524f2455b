"""Fixtures for the serving tests: a real gateway and real workers on loopback, serving checkpoints
written by transformers, and the references computed with transformers itself.

    def test_chat(smollm2_mesh):
        client = openai.OpenAI(base_url=smollm2_mesh.openai_url, api_key="unused")
"""
from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ServiceProcess, binary, launch_service  # noqa: F401  (tests/conftest.py)
from models.conftest import decoder_fixtures, encoder_fixtures, minilm, smollm2  # noqa: F401


@dataclass
class Mesh:
    gateway: ServiceProcess
    directory: Path
    stubs: object
    workers: dict = field(default_factory=dict)  # served name -> [ServiceProcess]
    _channel: object = None

    @property
    def openai_url(self) -> str:
        return f"http://{self.gateway.http_address}/v1"

    def models(self) -> dict:
        with urllib.request.urlopen(f"{self.openai_url}/models", timeout=10) as response:
            return {card["id"]: card for card in json.loads(response.read())["data"]}

    def serve(self, folder: Path, name: str, *flags: str, replica: int = 0, wait: bool = True) -> ServiceProcess:
        worker = launch_service(
            "worker", self.directory / f"{name}-{replica}",
            [f"--model={folder}", f"--served_model_name={name}", f"--replica={replica}",
             f"--gateways={self.gateway.grpc_address}", "--drain_seconds=20", *flags],
            timeout=180)
        self.workers.setdefault(name, []).append(worker)
        if wait:
            self.wait_for(name, replicas=len(self.workers[name]))
        return worker

    def wait_for(self, name: str, replicas: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replicas(name) >= replicas:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} not served with {replicas} replicas after {timeout}s: {self.models()}")

    def replicas(self, name: str) -> int:
        stub = self.stubs.gateway_pb2_grpc.GatewayServiceStub(self.channel)
        for model in stub.ListModels(self.stubs.gateway_pb2.ListModelsRequest(), timeout=10).models:
            if model.name == name:
                return model.replicas
        return 0

    @property
    def channel(self):
        if self._channel is None:
            self._channel = self.gateway.channel()
        return self._channel

    def gateway_stub(self):
        return self.stubs.gateway_pb2_grpc.GatewayServiceStub(self.channel)

    def stop(self) -> None:
        for workers in self.workers.values():
            for worker in workers:
                worker.stop()
        self.gateway.stop()


def start_mesh(directory: Path, stubs, *gateway_flags: str) -> Mesh:
    gateway = launch_service("gateway", directory, list(gateway_flags))
    return Mesh(gateway, directory, stubs)


@pytest.fixture
def mesh(tmp_path, stubs):
    """A gateway of its own for one test; serve what the test needs with mesh.serve(...)."""
    started = start_mesh(tmp_path / "mesh", stubs)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def smollm2_folder(smollm2) -> Path:  # noqa: F811
    """SmolLM2-135M-Instruct's float32 checkpoint folder (config, weights, tokenizer)."""
    return smollm2 / "checkpoint"


@pytest.fixture(scope="module")
def smollm2_mesh(tmp_path_factory, stubs, smollm2_folder):
    """One gateway serving SmolLM2-135M-Instruct (float32, paged attention) for a module's tests."""
    started = start_mesh(tmp_path_factory.mktemp("smollm2-mesh"), stubs)
    started.serve(smollm2_folder, "smollm2", "--kv_cache_memory=268435456")
    yield started
    started.stop()
