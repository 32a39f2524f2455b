"""The four service binaries as a client sees them: health, reflection, metrics scraped by a real
Prometheus server and checked by promtool, graceful drain on SIGTERM, and bad start-up input."""
from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import binary, launch_service

SERVICES = {
    "registry": "flotilla.v1.RegistryService",
    "preprocess": "flotilla.v1.PreprocessService",
    "worker": "flotilla.v1.WorkerService",
    "gateway": "flotilla.v1.GatewayService",
}


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def list_services_by_reflection(channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return [service.name for response in responses for service in response.list_services_response.service]


@pytest.mark.parametrize("name", SERVICES)
def test_service_reports_serving_lists_itself_by_reflection_and_serves_http(start_service, name):
    service = start_service(name)
    channel = service.channel()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = list_services_by_reflection(channel)
    assert SERVICES[name] in listed
    assert "grpc.health.v1.Health" in listed
    assert http_get(service.http_url("/healthz"))[0] == 200
    assert http_get(service.http_url("/readyz"))[0] == 200
    status, metrics = http_get(service.http_url("/metrics"))
    assert status == 200
    assert f'flotilla_build_info{{service="{name}"' in metrics
    assert service.stop() == 0


def test_a_gateway_without_workers_lists_nothing_and_names_what_it_lacks(start_service, stubs):
    gateway = start_service("gateway")
    stub = stubs.gateway_pb2_grpc.GatewayServiceStub(gateway.channel())
    assert list(stub.ListModels(stubs.gateway_pb2.ListModelsRequest(), timeout=10).models) == []
    request = stubs.gateway_pb2.GenerateRequest(model="smollm2", prompt="Hello")
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Generate(request, timeout=10))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "smollm2" in raised.value.details() and "none" in raised.value.details()


def test_request_id_is_echoed_and_logged(start_service, stubs):
    worker = start_service("worker")
    stub = stubs.worker_pb2_grpc.WorkerServiceStub(worker.channel())
    _, call = stub.GetWorkerInfo.with_call(stubs.worker_pb2.GetWorkerInfoRequest(),
                                           metadata=[("x-request-id", "trace-me-123")], timeout=10)
    assert ("x-request-id", "trace-me-123") in call.initial_metadata()
    worker.stop()
    assert '"request_id":"trace-me-123"' in worker.log()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_real_prometheus_scrapes_every_service_and_promtool_accepts_every_page(start_service, tmp_path):
    services = [start_service(name) for name in SERVICES]
    for service in services:  # make the RPC metrics non-empty
        health_pb2_grpc.HealthStub(service.channel()).Check(health_pb2.HealthCheckRequest(), timeout=10)

    for service in services:
        _, page = http_get(service.http_url("/metrics"))
        checked = subprocess.run(["promtool", "check", "metrics"], input=page, text=True, capture_output=True)
        assert checked.returncode == 0, f"{service.name}: {checked.stdout}{checked.stderr}"

    targets = ", ".join(f"'{service.http_address}'" for service in services)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                      f"  - job_name: flotilla\n    static_configs:\n      - targets: [{targets}]\n")
    port = free_port()
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        deadline = time.monotonic() + 90
        healthy: dict = {}
        while time.monotonic() < deadline:
            try:
                status, body = http_get(f"http://127.0.0.1:{port}/api/v1/targets")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
                continue
            if status == 200:
                import json  # noqa: PLC0415
                active = json.loads(body)["data"]["activeTargets"]
                healthy = {target["scrapeUrl"]: target["health"] for target in active}
                if len(healthy) == len(services) and all(h == "up" for h in healthy.values()):
                    break
            time.sleep(0.5)
        assert len(healthy) == len(services) and all(h == "up" for h in healthy.values()), healthy
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def metric_value(page: str, name: str) -> float | None:
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def matmul_request(stubs, size: int, repeat: int):
    def tensor(values):
        return stubs.common_pb2.Tensor(dtype=stubs.common_pb2.DATA_TYPE_FLOAT32, shape=list(values.shape),
                                       data=values.astype("<f4").tobytes())
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return a, stubs.worker_pb2.MatmulRequest(a=tensor(a), b=tensor(np.eye(size, dtype=np.float32)), repeat=repeat)


def wait_until_in_flight(worker, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_value(http_get(worker.http_url("/metrics"))[1], "flotilla_worker_matmul_in_flight") == 1:
            return
        time.sleep(0.02)
    pytest.fail("the Matmul call never started")


def test_sigterm_lets_the_in_flight_call_finish_refuses_new_calls_and_exits_zero(tmp_path, stubs):
    worker = launch_service("worker", tmp_path, ["--drain_seconds=120"])
    stub = stubs.worker_pb2_grpc.WorkerServiceStub(worker.channel())
    a, request = matmul_request(stubs, size=128, repeat=20000)
    outcome: dict = {}

    def call():
        try:
            outcome["response"] = stub.Matmul(request, timeout=300)
        except grpc.RpcError as error:
            outcome["error"] = error

    in_flight = threading.Thread(target=call)
    in_flight.start()
    wait_until_in_flight(worker)
    worker.process.send_signal(signal.SIGTERM)

    # Once draining, a new call on a new connection is refused with UNAVAILABLE.
    refused = None
    deadline = time.monotonic() + 30
    while refused is None and time.monotonic() < deadline:
        with grpc.insecure_channel(worker.grpc_address) as channel:
            try:
                stubs.worker_pb2_grpc.WorkerServiceStub(channel).GetWorkerInfo(
                    stubs.worker_pb2.GetWorkerInfoRequest(), timeout=5)
                time.sleep(0.05)
            except grpc.RpcError as error:
                # A call racing the start of Shutdown on a live connection is CANCELLED; once the
                # listener is closed, new calls are UNAVAILABLE. Keep asking until we see that.
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), error
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    refused = error
    assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE

    in_flight.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    product = np.frombuffer(outcome["response"].product.data, dtype="<f4").reshape(a.shape)
    np.testing.assert_allclose(product, a, rtol=1e-6)
    assert worker.process.wait(timeout=120) == 0


def test_drain_deadline_cancels_calls_that_run_past_it_and_still_exits_zero(tmp_path, stubs):
    worker = launch_service("worker", tmp_path, ["--drain_seconds=1"])
    stub = stubs.worker_pb2_grpc.WorkerServiceStub(worker.channel())
    _, request = matmul_request(stubs, size=64, repeat=2_000_000_000)
    future = stub.Matmul.future(request, timeout=300)
    wait_until_in_flight(worker)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0
    with pytest.raises(grpc.RpcError) as raised:
        future.result(timeout=60)
    assert raised.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def run_service(name: str, *flags: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary(f"flotilla-{name}")), f"--ready_file={tmp_path / 'ready'}", *flags],
                          capture_output=True, text=True, timeout=60)


def test_unknown_flag_is_one_clear_line_and_a_nonzero_exit(tmp_path):
    result = run_service("registry", "--no_such_flag=1", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "no_such_flag" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_a_port_in_use_is_one_clear_line_and_a_nonzero_exit(tmp_path, which):
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        result = run_service("gateway", f"--{which}_listen=127.0.0.1:{port}", tmp_path=tmp_path)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert not (tmp_path / "ready").exists()


def test_a_data_directory_that_is_a_file_is_refused(tmp_path):
    not_a_directory = tmp_path / "plain-file"
    not_a_directory.write_text("x")
    result = run_service("registry", f"--data_dir={not_a_directory}", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
