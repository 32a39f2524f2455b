"""Stand-ins for flotilla-gateway and flotilla-worker that speak their gRPC contract (gateway.proto,
worker.proto) and nothing more, so that test_cli.py checks how `flotilla serve`, `status`,
`unserve`, `down` and `chat` drive the processes without loading a model.

    python3 fake_serving.py gateway --grpc_listen=127.0.0.1:0 --ready_file=F ...
    python3 fake_serving.py worker --model=M --served_model_name=N --gateways=G ...

The flotilla.v1 Python modules must be importable (PYTHONPATH; conftest's `stubs` makes them).
The gateway answers Generate for a registered model by streaming "[<messages>] <last message>" in
two pieces, NOT_FOUND for any other. A worker whose --model contains "broken" fails to start, as a
worker that cannot load its model does. Each worker writes its flags to <data_dir>/arguments.json.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flotilla.v1 import gateway_pb2, gateway_pb2_grpc, worker_pb2, worker_pb2_grpc


def parse_flags(arguments: list[str]) -> dict[str, str]:
    flags = {}
    for argument in arguments:
        name, _, value = argument.removeprefix("--").partition("=")
        flags[name] = value
    return flags


def write_ready_file(path: str, grpc_port: int) -> None:
    temporary = Path(path + ".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "grpc_address": f"127.0.0.1:{grpc_port}",
                                     "http_address": f"127.0.0.1:{grpc_port + 1}"}))
    temporary.rename(path)


def start_server(flags: dict[str, str], add_services) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_services(server)
    port = server.add_insecure_port(flags.get("grpc_listen", "127.0.0.1:0"))
    server.start()
    return server, port


def wait_for_sigterm(server: grpc.Server) -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=1).wait()


class Gateway(gateway_pb2_grpc.GatewayServiceServicer, gateway_pb2_grpc.WorkerRegistryServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.replicas: dict[str, int] = {}

    def Register(self, request_iterator, context):
        first = next(request_iterator)
        name = first.info.served_model_name
        with self.lock:
            self.replicas[name] = self.replicas.get(name, 0) + 1
        yield gateway_pb2.RegistrationEvent(accepted=True)
        try:
            for _ in request_iterator:  # load reports, until the worker goes away
                pass
        finally:
            with self.lock:
                self.replicas[name] -= 1
                if self.replicas[name] == 0:
                    del self.replicas[name]

    def ListModels(self, request, context):
        with self.lock:
            return gateway_pb2.ListModelsResponse(models=[
                gateway_pb2.ServedModel(name=name, task="generate", replicas=count)
                for name, count in sorted(self.replicas.items())])

    def Generate(self, request, context):
        with self.lock:
            served = request.model in self.replicas
        if not served:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served")
        messages = request.chat.messages
        text = f"[{len(messages)}] {messages[-1].content}"
        middle = len(text) // 2
        yield gateway_pb2.GenerateResponse(text=text[:middle])
        yield gateway_pb2.GenerateResponse(text=text[middle:], finish_reason="stop")


class Worker(worker_pb2_grpc.WorkerServiceServicer):
    def GetLoad(self, request, context):
        return worker_pb2.WorkerLoad(num_requests_running=1, num_requests_waiting=2, kv_blocks_used=3,
                                     kv_blocks_total=64)


def run_gateway(flags: dict[str, str]) -> None:
    gateway = Gateway()

    def add(server):
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(gateway, server)
        gateway_pb2_grpc.add_WorkerRegistryServicer_to_server(gateway, server)

    server, port = start_server(flags, add)
    write_ready_file(flags["ready_file"], port)
    wait_for_sigterm(server)


def run_worker(flags: dict[str, str]) -> None:
    data_dir = Path(flags["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "arguments.json").write_text(json.dumps(flags))
    if "broken" in flags["model"]:
        print(f"worker: cannot load {flags['model']}: no such repository", flush=True)
        sys.exit(1)
    server, port = start_server(flags, lambda server: worker_pb2_grpc.add_WorkerServiceServicer_to_server(Worker(), server))
    reports: queue.Queue = queue.Queue()
    reports.put(gateway_pb2.WorkerReport(
        info=worker_pb2.WorkerInfo(served_model_name=flags["served_model_name"], task="generate"),
        address=f"127.0.0.1:{port}", replica=int(flags["replica"]), load=worker_pb2.WorkerLoad(kv_blocks_total=64)))

    def report_stream():
        while (report := reports.get()) is not None:
            yield report

    channel = grpc.insecure_channel(flags["gateways"].split(",")[0])
    events = gateway_pb2_grpc.WorkerRegistryStub(channel).Register(report_stream())
    assert next(events).accepted
    write_ready_file(flags["ready_file"], port)
    wait_for_sigterm(server)
    reports.put(None)
    channel.close()


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    (run_gateway if role == "gateway" else run_worker)(parse_flags(arguments))
