"""What the serving tests share: requests through the gateway's gRPC API, the transformers
references they are compared with, metrics read from /metrics, and the failover drill (stream many
requests, kill a process once they are under way).

    expected = transformers_greedy(folder, [prompt], [16])
    ids, finish = generate_ids(mesh, "smollm2", prompt, 16)
"""
from __future__ import annotations

import json
import random
import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

DECODER_CASES = ["llama_gqa_tied", "llama_mha_untied", "llama_rope_yarn", "qwen2_sliding", "qwen3_qk_norm",
                 "mistral_sliding", "gpt2_tied", "gpt2_untied_scaled", "phi3_gqa_partial_rotary",
                 "gemma2_softcap_sliding", "gemma2_mha_untied", "gemma3_gqa", "gemma3_mha_linear_rope_softcap"]


def transformers_greedy(folder, prompts, max_new_tokens, eos=True):
    """transformers' generate, one prompt at a time (the reference the issue names)."""
    import transformers  # noqa: PLC0415

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    outputs = []
    for prompt, budget in zip(prompts, max_new_tokens):
        ids = torch.tensor([prompt])
        kwargs = dict(max_new_tokens=budget, do_sample=False, attention_mask=torch.ones_like(ids))
        if not eos:
            kwargs.update(eos_token_id=None, pad_token_id=0)
        with torch.no_grad():
            generated = model.generate(ids, **kwargs)
        outputs.append(generated[0, len(prompt):].tolist())
    return outputs


def generate_ids(mesh, name, prompt, max_tokens, **sampling):
    stubs = mesh.stubs
    request = stubs.gateway_pb2.GenerateRequest(
        model=name, prompt_ids=stubs.common_pb2.TokenIds(ids=prompt),
        sampling=stubs.gateway_pb2.SamplingParameters(max_new_tokens=max_tokens, **sampling))
    ids, finish = [], ""
    for response in mesh.gateway_stub().Generate(request, timeout=600):
        ids.extend(response.token_ids)
        finish = response.finish_reason or finish
    return ids, finish


def concurrently(function, arguments, workers=64):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: function(*item), arguments))


def metric(url, name, labels=""):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", re.M)
    total = 0.0
    for match in pattern.finditer(text):
        if labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def post(url, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def smollm2_prompts(smollm2_folder, count, seed=0):
    """Real text prompts of different lengths, tokenized with SmolLM2's own tokenizer."""
    import transformers  # noqa: PLC0415

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_folder)
    words = ("the river runs past an old mill where children learn to count stones and the miller tells "
             "stories of winters long ago when the water froze and the wheel stood still for a month").split()
    generator = random.Random(seed)
    prompts = []
    for _ in range(count):
        length = generator.randint(1, 60)
        prompts.append(tokenizer.encode(" ".join(generator.choice(words) for _ in range(length))))
    return prompts


def rank_pids(agent_pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text()
    except FileNotFoundError:
        return []
    return sorted(int(pid) for pid in text.split())


def assert_takes_traffic(mesh, metrics_url, prompts, expected, rounds=6):
    """Rounds of 8 concurrent greedy requests (still equal to the reference) until the replica at
    metrics_url has generated tokens: the router spreads load, so it gets some within a few rounds."""
    for _ in range(rounds):
        results = concurrently(lambda prompt: generate_ids(mesh, "smollm2", prompt, 4), [(p,) for p in prompts[:8]])
        assert [ids for ids, _ in results] == [reference[:4] for reference in expected[:8]]
        if metric(metrics_url, "flotilla_generation_tokens_total") > 0:
            return
    raise AssertionError(f"{metrics_url}: the restarted replica got no request in {rounds} rounds")


def serve_and_compare_greedy(mesh, fixtures, cases, flags, seed, prompts_per_case, label):
    """Serves each fixture with `flags` (a small KV pool and step budget, so prompts are chunked),
    sends every case's random prompts at once, and checks each answer equals transformers' greedy."""
    generator = random.Random(seed)
    jobs = []
    for case in cases:
        mesh.serve(fixtures / case, case, *flags, "--kv_cache_memory=4194304", "--max_num_batched_tokens=24")
        prompts = [[generator.randint(3, 159) for _ in range(generator.randint(1, 30))] for _ in range(prompts_per_case)]
        budgets = [min(generator.randint(1, 24), 64 - len(prompt)) for prompt in prompts]
        expected = transformers_greedy(fixtures / case, prompts, budgets, eos=False)
        jobs.extend((case, prompt, budget, reference) for prompt, budget, reference in zip(prompts, budgets, expected))
    results = concurrently(
        lambda case, prompt, budget, _: generate_ids(mesh, case, prompt, budget, ignore_eos=True), jobs)
    for (case, prompt, budget, reference), (ids, finish) in zip(jobs, results):
        assert ids == reference, f"{case} ({label}): prompt {prompt}"
        assert finish == "length"


def stream_killing_once(mesh, prompts, budget, kill, samplings=None, name="smollm2"):
    """Streams every prompt at once through the gateway (ignore_eos, `budget` tokens, each with its
    sampling parameters) and calls kill() as soon as any stream has 4 tokens. Returns every stream's
    tokens and finish reason."""
    samplings = samplings or [{}] * len(prompts)
    streamed = [[] for _ in prompts]
    started = threading.Event()

    def stream(index, prompt):
        stubs = mesh.stubs
        request = stubs.gateway_pb2.GenerateRequest(
            model=name, prompt_ids=stubs.common_pb2.TokenIds(ids=prompt),
            sampling=stubs.gateway_pb2.SamplingParameters(max_new_tokens=budget, ignore_eos=True, **samplings[index]))
        finish = ""
        for response in mesh.gateway_stub().Generate(request, timeout=600):
            streamed[index].extend(response.token_ids)
            finish = response.finish_reason or finish
            if len(streamed[index]) >= 4:
                started.set()
        return finish

    def kill_when_started():
        assert started.wait(timeout=300)
        kill()

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    finishes = concurrently(stream, list(enumerate(prompts)), workers=len(prompts))
    killer.join()
    return streamed, finishes
