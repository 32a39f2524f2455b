"""Request migration (issue #12's failover, the gateway half): a worker killed mid-generation loses
no request. The gateway holds each request's prompt and the tokens streamed so far, re-submits it
to another replica with those tokens carried over, and the client's stream continues — no error, no
repeated token, no gap — equal to what transformers generates without any failure."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from serving.test_serving import concurrently, metric, smollm2_prompts, transformers_greedy


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_generation_loses_no_request(mesh, smollm2_folder):
    first = mesh.serve(smollm2_folder, "smollm2", "--kv_cache_memory=134217728", replica=0)
    mesh.serve(smollm2_folder, "smollm2", "--kv_cache_memory=134217728", replica=1)
    prompts = smollm2_prompts(smollm2_folder, 16, seed=11)
    budget = 48
    expected = transformers_greedy(smollm2_folder, prompts, [budget] * len(prompts), eos=False)

    streamed = [[] for _ in prompts]
    started = threading.Event()

    def stream(index, prompt):
        stubs = mesh.stubs
        request = stubs.gateway_pb2.GenerateRequest(
            model="smollm2", prompt_ids=stubs.common_pb2.TokenIds(ids=prompt),
            sampling=stubs.gateway_pb2.SamplingParameters(max_new_tokens=budget, ignore_eos=True))
        finish = ""
        for response in mesh.gateway_stub().Generate(request, timeout=600):
            streamed[index].extend(response.token_ids)
            finish = response.finish_reason or finish
            if len(streamed[index]) >= 4:
                started.set()
        return finish

    def kill_when_started():
        assert started.wait(timeout=300)
        first.process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    finishes = concurrently(stream, list(enumerate(prompts)), workers=16)
    killer.join()
    assert first.process.wait(timeout=30) == -signal.SIGKILL
    for index, (tokens, reference) in enumerate(zip(streamed, expected)):
        assert tokens == reference, f"request {index}"
    assert finishes == ["length"] * len(prompts)
    migrations = metric(mesh.gateway.http_url("/metrics"), "flotilla_worker_failovers_total")
    assert migrations > 0
    # The dead replica left the router; the live one serves on.
    deadline = time.monotonic() + 30
    while mesh.replicas("smollm2") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mesh.replicas("smollm2") == 1
