"""The chart's registration scheme with real processes: a worker is given the addresses of every
gateway the autoscaler may start (helm/flotilla's "flotilla.gatewayAddresses"), registers with
each that exists, and a gateway that starts later at one of the other addresses gets the worker
within seconds — so every gateway replica sees every worker. On Kubernetes the addresses are the
gateway StatefulSet's pod names; a name without a pod fails like a closed port here."""
from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from conftest import launch_service  # noqa: F401  (tests/conftest.py)
from models.conftest import smollm2  # noqa: F401  (the SmolLM2 checkpoint fixture)


def served_models(gateway) -> set[str]:
    with urllib.request.urlopen(gateway.http_url("/v1/models"), timeout=10) as response:
        return {card["id"] for card in json.loads(response.read())["data"]}


def wait_until_served(gateway, name: str, timeout: float) -> float:
    started = time.monotonic()
    while name not in served_models(gateway):
        assert time.monotonic() - started < timeout, f"{name} never registered with {gateway.grpc_address}"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.slow
def test_a_worker_registers_with_every_gateway_including_those_started_later(tmp_path, smollm2):  # noqa: F811
    with socket.socket() as probe:   # an address where no gateway runs yet (the autoscaler's next pod)
        probe.bind(("127.0.0.1", 0))
        later_port = probe.getsockname()[1]
    # A draining gateway ends the workers' registration streams once its requests are done, so a
    # stop does not take the whole --drain_seconds.
    drain = "--drain_seconds=120"
    started = []
    try:
        gateways = [launch_service("gateway", tmp_path / f"gateway-{index}", [drain]) for index in range(2)]
        started += gateways
        addresses = [gateway.grpc_address for gateway in gateways] + [f"127.0.0.1:{later_port}"]
        worker = launch_service("worker", tmp_path / "worker", [
            f"--model={smollm2 / 'checkpoint'}", "--served_model_name=smollm2", "--kv_cache_memory=67108864",
            f"--gateways={','.join(addresses)}", "--drain_seconds=5"], timeout=300)
        started.append(worker)
        for gateway in gateways:
            wait_until_served(gateway, "smollm2", timeout=60)

        later = launch_service("gateway", tmp_path / "gateway-later", [f"--grpc_listen=127.0.0.1:{later_port}", drain])
        started.append(later)
        # The worker retries an address that does not answer at least every 2 s (its backoff cap).
        assert wait_until_served(later, "smollm2", timeout=30) < 30
        assert worker.log().count("cannot register with the gateway yet") == 1

        # A gateway pod replaced at the same name (a rollout, a rescheduled pod) gets the worker back.
        replaced_address = gateways[1].grpc_address
        gateways[1].stop()
        replacement = launch_service("gateway", tmp_path / "gateway-replacement", [f"--grpc_listen={replaced_address}", drain])
        started.append(replacement)
        wait_until_served(replacement, "smollm2", timeout=30)
        assert "smollm2" in served_models(gateways[0])
    finally:
        for service in reversed(started):
            service.stop()
