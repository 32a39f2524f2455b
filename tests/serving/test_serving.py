"""The mesh serves: real gateway and worker processes on loopback, checked against transformers.

Greedy outputs through the gateway equal transformers' `generate` run one prompt at a time
(float32), for SmolLM2 and for random checkpoints of every decoder architecture, with many
concurrent requests, prefix caching on, and a KV budget small enough to force preemption.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
import torch

from serving.helpers import (DECODER_CASES, concurrently, generate_ids, metric, post, serve_and_compare_greedy,
                             smollm2_prompts, transformers_greedy)

@pytest.mark.slow
def test_64_concurrent_greedy_requests_equal_transformers_one_at_a_time(smollm2_mesh, smollm2_folder):
    prompts = smollm2_prompts(smollm2_folder, 64)
    budgets = [4 + (index * 7) % 21 for index in range(64)]
    expected = transformers_greedy(smollm2_folder, prompts, budgets)
    results = concurrently(lambda prompt, budget: generate_ids(smollm2_mesh, "smollm2", prompt, budget),
                           list(zip(prompts, budgets)))
    for index, ((ids, finish), reference) in enumerate(zip(results, expected)):
        assert ids == reference, f"request {index}: prompt of {len(prompts[index])} tokens"
        assert finish in ("stop", "length")
    # Prompts of one prompt family share leading blocks: the prefix cache was consulted.
    metrics_url = smollm2_mesh.workers["smollm2"][0].http_url("/metrics")
    assert metric(metrics_url, "flotilla_prefix_cache_queries_total") > 0


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["paged", "sdpa", "eager"])
def test_every_decoder_architecture_serves_greedy_like_transformers(mesh, decoder_fixtures, attention):
    # sdpa has no softcapping (as in transformers): gemma2's softcapped case serves with paged or eager.
    cases = DECODER_CASES if attention == "paged" else ["llama_gqa_tied", "mistral_sliding", "gemma2_mha_untied",
                                                        "gemma3_gqa", "gpt2_tied", "phi3_gqa_partial_rotary"]
    serve_and_compare_greedy(mesh, decoder_fixtures, cases, [f"--attention={attention}"], seed=1, prompts_per_case=6,
                             label=attention)


def test_sdpa_on_a_softcapped_model_is_refused_at_start(mesh, decoder_fixtures):
    with pytest.raises(RuntimeError) as raised:
        mesh.serve(decoder_fixtures / "gemma2_softcap_sliding", "capped", "--attention=sdpa")
    assert "attn_logit_softcapping" in str(raised.value) and "paged" in str(raised.value)


@pytest.mark.slow
def test_a_small_kv_budget_preempts_and_still_equals_transformers(mesh, smollm2_folder):
    # 48 blocks of 16 tokens: a few sequences at a time; the rest wait or are preempted.
    mesh.serve(smollm2_folder, "tight", "--kv_cache_memory=35389440", "--max_num_seqs=16")
    prompts = smollm2_prompts(smollm2_folder, 16, seed=3)
    budgets = [24] * 16
    expected = transformers_greedy(smollm2_folder, prompts, budgets)
    results = concurrently(lambda prompt, budget: generate_ids(mesh, "tight", prompt, budget),
                           list(zip(prompts, budgets)), workers=16)
    assert [ids for ids, _ in results] == expected
    assert metric(mesh.workers["tight"][0].http_url("/metrics"), "flotilla_num_preemptions_total") > 0


def test_seeded_sampling_is_the_same_alone_and_among_31_others(smollm2_mesh, smollm2_folder):
    prompt = smollm2_prompts(smollm2_folder, 1, seed=5)[0]
    sampling = dict(temperature=0.9, top_p=0.95, top_k=50, seed=1234, has_seed=True, ignore_eos=True)
    alone, _ = generate_ids(smollm2_mesh, "smollm2", prompt, 16, **sampling)
    others = smollm2_prompts(smollm2_folder, 31, seed=6)
    jobs = [(p, dict(temperature=1.0, seed=index, has_seed=True, ignore_eos=True)) for index, p in enumerate(others)]
    jobs.insert(17, (prompt, sampling))
    results = concurrently(lambda p, s: generate_ids(smollm2_mesh, "smollm2", p, 16, **s), jobs, workers=32)
    assert results[17][0] == alone
    different_seed, _ = generate_ids(smollm2_mesh, "smollm2", prompt, 16, **{**sampling, "seed": 99})
    assert different_seed != alone


def test_openai_client_chat_and_completions_streaming_and_not(smollm2_mesh, smollm2_folder):
    import openai  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    client = openai.OpenAI(base_url=smollm2_mesh.openai_url, api_key="unused")
    assert [model.id for model in client.models.list()] == ["smollm2"]
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_folder)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
    reference_ids = transformers_greedy(smollm2_folder, [list(prompt)], [24])[0]
    reference = tokenizer.decode(reference_ids, skip_special_tokens=True)

    chat = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24, temperature=0)
    assert chat.choices[0].message.content == reference
    assert chat.usage.prompt_tokens == len(prompt)
    assert chat.usage.completion_tokens == len(reference_ids)
    assert chat.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == reference
    assert usage.completion_tokens == len(reference_ids)
    assert finish == chat.choices[0].finish_reason

    completion = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8,
                                           temperature=0, logprobs=2)
    text_ids = tokenizer.encode("The capital of France is")
    expected_ids = transformers_greedy(smollm2_folder, [text_ids], [8])[0]
    assert completion.choices[0].text == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert len(completion.choices[0].logprobs.token_logprobs) == len(expected_ids)
    assert all(value <= 0 for value in completion.choices[0].logprobs.token_logprobs)

    chat_logprobs = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=4, temperature=0,
                                                   logprobs=True, top_logprobs=3)
    content = chat_logprobs.choices[0].logprobs.content
    assert len(content) == 4 and all(len(entry.top_logprobs) == 3 for entry in content)
    # Greedy: the chosen token is the most likely one.
    assert all(entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5) for entry in content)


def test_stop_strings_end_the_text_without_leaking_it(smollm2_mesh):
    import openai  # noqa: PLC0415

    client = openai.OpenAI(base_url=smollm2_mesh.openai_url, api_key="unused")
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    full = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert "Paris" in text
    stopped = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24, temperature=0,
                                             stop=["Paris"])
    assert stopped.choices[0].message.content == text[:text.index("Paris")]
    assert stopped.choices[0].finish_reason == "stop"


def test_n_choices_and_usage(smollm2_mesh):
    import openai  # noqa: PLC0415

    client = openai.OpenAI(base_url=smollm2_mesh.openai_url, api_key="unused")
    result = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, temperature=1.0, seed=7, n=3, extra_body={"ignore_eos": True})
    assert [choice.index for choice in result.choices] == [0, 1, 2]
    assert all(choice.finish_reason == "length" for choice in result.choices)
    assert result.usage.completion_tokens == 18


def test_bad_requests_get_openai_errors_and_change_nothing(smollm2_mesh):
    url = smollm2_mesh.openai_url
    status, body, _ = post(f"{url}/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and "nope" in body["error"]["message"] and "smollm2" in body["error"]["message"]
    max_model_len = smollm2_mesh.models()["smollm2"]["max_model_len"]
    status, body, _ = post(f"{url}/completions", {"model": "smollm2", "prompt": "x " * (max_model_len + 10), "max_tokens": 4})
    assert status == 400 and str(max_model_len) in body["error"]["message"], body
    status, body, _ = post(f"{url}/completions", {"model": "smollm2", "prompt": "x", "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body, _ = post(f"{url}/chat/completions", b"{not json")
    assert status == 400 and "error" in body
    status, body, _ = post(f"{url}/chat/completions", b"{}", content_type="text/plain")
    assert status == 415
    status, body, _ = post(f"{url}/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
                                                       "frobnicate": 1})
    assert status == 400 and "frobnicate" in body["error"]["message"]
    status, body, _ = post(f"{url}/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
                                                       "logit_bias": {"999999": 5}})
    assert status == 400 and body["error"]["param"] == "logit_bias"
    status, body, _ = post(f"{url}/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
                                                       "n": 1000})
    assert status == 400
    status, body, _ = post(f"{url}/embeddings", {"model": "smollm2", "input": "x"})
    assert status == 400 and "generation" in body["error"]["message"]
    # Still serving, unchanged.
    status, body, _ = post(f"{url}/completions", {"model": "smollm2", "prompt": "Hello", "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_embeddings_equal_sentence_transformers_and_chat_to_an_encoder_is_refused(mesh, minilm):
    import openai  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    mesh.serve(minilm, "minilm")
    client = openai.OpenAI(base_url=mesh.openai_url, api_key="unused")
    sentences = ["A man is eating food.", "The new movie is awesome, I loved it!", "x" * 3]
    result = client.embeddings.create(model="minilm", input=sentences)
    reference = SentenceTransformer(str(minilm), device="cpu").encode(sentences, convert_to_tensor=True)
    for item, expected in zip(result.data, reference):
        got = torch.tensor(item.embedding)
        assert torch.nn.functional.cosine_similarity(got, expected, dim=0) >= 0.99999
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}])


def test_a_disconnected_stream_frees_its_blocks(smollm2_mesh):
    worker = smollm2_mesh.workers["smollm2"][0]
    metrics_url = worker.http_url("/metrics")
    request = urllib.request.Request(
        f"{smollm2_mesh.openai_url}/completions",
        data=json.dumps({"model": "smollm2", "prompt": "Tell me a long story.", "max_tokens": 2000,
                         "ignore_eos": True, "stream": True}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    response = urllib.request.urlopen(request, timeout=60)
    for _ in range(3):
        assert response.readline()
    assert metric(metrics_url, "flotilla_num_requests_running") == 1
    response.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if metric(metrics_url, "flotilla_num_requests_running") == 0 and metric(metrics_url, "flotilla_kv_cache_usage_perc") == 0:
            break
        time.sleep(0.1)
    assert metric(metrics_url, "flotilla_num_requests_running") == 0
    assert metric(metrics_url, "flotilla_kv_cache_usage_perc") == 0


def test_overload_gets_429_with_retry_after(tmp_path, stubs, smollm2_folder):
    from serving.conftest import start_mesh  # noqa: PLC0415

    mesh = start_mesh(tmp_path / "mesh", stubs, "--max_waiting_requests=1")
    try:
        mesh.serve(smollm2_folder, "smollm2", "--max_num_seqs=1")
        body = {"model": "smollm2", "prompt": "Count to a hundred:", "max_tokens": 64, "ignore_eos": True}
        results = concurrently(lambda _: post(f"{mesh.openai_url}/completions", body), [(i,) for i in range(8)], workers=8)
        statuses = [status for status, _, _ in results]
        assert 200 in statuses and 429 in statuses
        rejected = next(result for result in results if result[0] == 429)
        assert rejected[2].get("Retry-After") and rejected[1]["error"]["message"]
    finally:
        mesh.stop()


def start_long_request(mesh, worker, results):
    """A 48-token greedy completion on a thread, returned once the worker runs it; its (status,
    body, headers) lands in results["long"]."""
    def long_request():
        results["long"] = post(f"{mesh.openai_url}/completions",
                               {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": True,
                                "temperature": 0})

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while metric(worker.http_url("/metrics"), "flotilla_num_requests_running") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return thread


def test_sigterm_drains_the_worker_and_the_gateway(mesh, smollm2_folder):
    worker = mesh.serve(smollm2_folder, "smollm2")
    results = {}
    thread = start_long_request(mesh, worker, results)
    worker.process.send_signal(15)
    time.sleep(0.3)
    status, body, _ = post(f"{mesh.openai_url}/completions", {"model": "smollm2", "prompt": "x", "max_tokens": 2})
    assert status == 503, body
    thread.join(timeout=120)
    status, body, _ = results["long"]
    assert status == 200 and body["usage"]["completion_tokens"] == 48
    assert worker.process.wait(timeout=60) == 0
    # With its only worker gone the model answers 503 (retry later), not 404.
    status, body, _ = post(f"{mesh.openai_url}/completions", {"model": "smollm2", "prompt": "x", "max_tokens": 2})
    assert status == 503


def test_tools_reach_the_chat_template_as_transformers_renders_them(mesh, smollm2_folder, tmp_path):
    """SmolLM2's weights and tokenizer with Qwen2.5's chat template, which renders `tools`."""
    import openai  # noqa: PLC0415
    import transformers  # noqa: PLC0415
    from conftest import REPOSITORY  # noqa: PLC0415

    folder = tmp_path / "smollm2-qwen-template"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        (folder / name).symlink_to(smollm2_folder / name)
    tokenizer_config = json.loads((smollm2_folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "chat_template.jinja").write_text(
        (REPOSITORY / "tests" / "fixtures" / "chat_templates" / "qwen2.5-instruct.jinja").read_text())
    mesh.serve(folder, "tooly")
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    expected = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected

    client = openai.OpenAI(base_url=mesh.openai_url, api_key="unused")
    result = client.chat.completions.create(model="tooly", messages=messages, tools=tools, max_tokens=4, temperature=0)
    assert result.usage.prompt_tokens == len(expected)
    without_tools = client.chat.completions.create(model="tooly", messages=messages, max_tokens=4, temperature=0)
    assert without_tools.usage.prompt_tokens < result.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError):  # needs constrained decoding, which we do not do
        client.chat.completions.create(model="tooly", messages=messages, tools=tools, tool_choice="required")


def test_one_worker_registers_with_two_gateways_and_both_serve(tmp_path, stubs, smollm2_folder):
    """Gateways hold no state: a worker told of two serves through both, and each gateway's metrics
    count what its own clients saw."""
    from conftest import launch_service  # noqa: PLC0415
    from serving.conftest import start_mesh  # noqa: PLC0415

    first = start_mesh(tmp_path / "first", stubs)
    second = start_mesh(tmp_path / "second", stubs)
    worker = launch_service("worker", tmp_path / "worker",
                            [f"--model={smollm2_folder}", "--served_model_name=smollm2",
                             f"--gateways={first.gateway.grpc_address},{second.gateway.grpc_address}"], timeout=180)
    try:
        first.wait_for("smollm2")
        second.wait_for("smollm2")
        body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
        answers = [post(f"{mesh.openai_url}/completions", body) for mesh in (first, second)]
        assert all(status == 200 for status, _, _ in answers)
        assert answers[0][1]["choices"][0]["text"] == answers[1][1]["choices"][0]["text"]
        for mesh in (first, second):
            metrics_url = mesh.gateway.http_url("/metrics")
            assert metric(metrics_url, "flotilla_time_to_first_token_seconds_count", 'model_name="smollm2"') == 1
            assert metric(metrics_url, "flotilla_request_generation_tokens_total", 'model_name="smollm2"') == 6
            assert metric(metrics_url, "flotilla_router_replicas", 'model_name="smollm2"') == 1
        worker.stop()
        deadline = time.monotonic() + 30
        while (first.replicas("smollm2") or second.replicas("smollm2")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.replicas("smollm2") == 0 and second.replicas("smollm2") == 0
    finally:
        worker.stop()
        first.stop()
        second.stop()


def test_classify_through_the_grpc_api_equals_transformers(mesh, smollm2_folder, tmp_path):
    """A LlamaForSequenceClassification written by transformers (SmolLM2's tokenizer), served for
    task classify: the gateway tokenizes, the worker runs one padded batch."""
    import transformers  # noqa: PLC0415

    folder = tmp_path / "classifier"
    config = transformers.AutoConfig.for_model(
        "llama", vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
        id2label={0: "negative", 1: "neutral", 2: "positive"})
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((smollm2_folder / name).read_bytes())
    mesh.serve(folder, "sentiment")
    texts = ["I loved this film.", "It was fine, I guess, nothing special at all.", "Terrible."]
    stub = mesh.gateway_stub()
    response = stub.Classify(mesh.stubs.gateway_pb2.ClassifyRequest(model="sentiment", texts=texts), timeout=60)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for text, logits, label in zip(texts, response.logits, response.labels):
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            expected = model(ids).logits[0]
        got = torch.frombuffer(bytearray(logits.data), dtype=torch.float32)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert label == config.id2label[int(expected.argmax())]
    with pytest.raises(Exception) as raised:
        stub.Embed(mesh.stubs.gateway_pb2.EmbedRequest(model="sentiment", texts=["x"]), timeout=60)
    assert "classify" in str(raised.value)


def test_a_passed_grpc_deadline_aborts_the_request_on_its_worker(smollm2_mesh):
    import grpc  # noqa: PLC0415

    stubs = smollm2_mesh.stubs
    metrics_url = smollm2_mesh.workers["smollm2"][0].http_url("/metrics")
    request = stubs.gateway_pb2.GenerateRequest(
        model="smollm2", prompt="Tell me a long story.",
        sampling=stubs.gateway_pb2.SamplingParameters(max_new_tokens=2000, ignore_eos=True))
    with pytest.raises(grpc.RpcError) as raised:
        for _ in smollm2_mesh.gateway_stub().Generate(request, timeout=1.0):
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 30
    while metric(metrics_url, "flotilla_num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(metrics_url, "flotilla_num_requests_running") == 0
    assert metric(metrics_url, "flotilla_kv_cache_usage_perc") == 0


def test_sigterm_drains_the_gateway(tmp_path, stubs, smollm2_folder):
    # A drain deadline far beyond the test's: the gateway leaves once its requests are done, without
    # waiting on the workers' registration streams (it ends them).
    from serving.conftest import start_mesh  # noqa: PLC0415

    mesh = start_mesh(tmp_path / "mesh", stubs, "--drain_seconds=600")
    try:
        drain_the_gateway(mesh, smollm2_folder)
    finally:
        mesh.stop()


def drain_the_gateway(mesh, smollm2_folder):
    worker = mesh.serve(smollm2_folder, "smollm2")
    results = {}
    thread = start_long_request(mesh, worker, results)
    mesh.gateway.process.send_signal(15)
    time.sleep(0.2)
    status, body, _ = post(f"{mesh.openai_url}/completions", {"model": "smollm2", "prompt": "x", "max_tokens": 2})
    assert status == 503, body  # admits nothing new while it drains
    thread.join(timeout=120)
    status, body, _ = results["long"]
    assert status == 200 and body["usage"]["completion_tokens"] == 48  # finished within the drain
    assert mesh.gateway.process.wait(timeout=60) == 0
