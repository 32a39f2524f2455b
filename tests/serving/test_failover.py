"""Request migration (issue #12's failover): a worker killed mid-generation loses no request. The
gateway holds each request's prompt and the tokens streamed so far, re-submits it to another replica
with those tokens carried over, and the client's stream continues — no error, no repeated token, no
gap — equal to what transformers generates without any failure. The killed rank's agent starts it
again, and the replica takes traffic once more. (A tensor-parallel group's rank:
test_tensor_parallel.py.)"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from serving.helpers import (assert_takes_traffic, generate_ids, metric, rank_pids, smollm2_prompts, stream_killing_once,
                             transformers_greedy)


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_generation_loses_no_request(mesh, smollm2_folder):
    first = mesh.serve(smollm2_folder, "smollm2", "--kv_cache_memory=134217728", replica=0)
    mesh.serve(smollm2_folder, "smollm2", "--kv_cache_memory=134217728", replica=1)
    prompts = smollm2_prompts(smollm2_folder, 16, seed=11)
    budget = 48
    expected = transformers_greedy(smollm2_folder, prompts, [budget] * len(prompts), eos=False)
    # Four more streams sample with seeds: each token's draw depends on (seed, position) only, so a
    # migrated request samples what it would have without the failure (its reference: the same
    # request, run before anything is killed).
    seeded_prompts = smollm2_prompts(smollm2_folder, 4, seed=21)
    seeded = [dict(temperature=0.9, top_p=0.95, seed=100 + index, has_seed=True) for index in range(4)]
    seeded_expected = [generate_ids(mesh, "smollm2", prompt, budget, ignore_eos=True, **sampling)[0]
                       for prompt, sampling in zip(seeded_prompts, seeded)]
    samplings = [{}] * len(prompts) + seeded
    prompts = prompts + seeded_prompts
    expected = expected + seeded_expected

    killed = rank_pids(first.process.pid)
    assert len(killed) == 1
    # The worker process itself, not its agent.
    streamed, finishes = stream_killing_once(mesh, prompts, budget, kill=lambda: os.kill(killed[0], signal.SIGKILL),
                                             samplings=samplings)
    for index, (tokens, reference) in enumerate(zip(streamed, expected)):
        assert tokens == reference, f"request {index}"
    assert finishes == ["length"] * len(prompts)
    migrations = metric(mesh.gateway.http_url("/metrics"), "flotilla_worker_failovers_total")
    assert migrations > 0
    # The agent started the worker again; it registered and takes traffic.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ranks = rank_pids(first.process.pid)
        if ranks and ranks != killed and mesh.replicas("smollm2") == 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"replica 0 did not come back: {rank_pids(first.process.pid)}")
    assert first.process.poll() is None
    ready = json.loads((mesh.directory / "smollm2-0" / "worker.ready").read_text())
    assert_takes_traffic(mesh, f"http://{ready['http_address']}/metrics", prompts, expected)
