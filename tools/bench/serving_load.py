"""The shared parts of the serving benchmarks: prompts, an open-loop load generator that streams
OpenAI-style completions over loopback HTTP, and the metrics `vllm bench serve` reports.

    from serving_load import RequestRecord, build_prompts, run_open_loop, summarize
    prompts = build_prompts(tokenizer_json, count=8, prompt_tokens=128, seed=0)
    records, duration = asyncio.run(run_open_loop(url, payloads, request_rate=inf, max_concurrency=8,
                                                  time_limit_seconds=300))
    metrics = summarize(records, duration)

Standard library only (asyncio streams, no aiohttp): the client must cost as little as possible
next to the server it measures, and the project pins no asynchronous HTTP client.

Metric definitions follow vLLM 0.34 `vllm/benchmarks/serve.py` (see
shared/reference/serving.md §4.2): TTFT = first chunk carrying output − send; ITL = gap between
consecutive output chunks; E2EL = last chunk − send; TPOT = (E2EL − TTFT) / (output tokens − 1),
per request; throughputs divide totals by the benchmark's wall time (first send to last finish).
Output token counts come from the final `usage` chunk (`stream_options.include_usage`).

Not thread-safe: one event loop drives a run.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import random
import socket
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

# The 128-token prompts are made of whole lowercase words that each encode to exactly one token
# (with their leading space), so the prompt length is exact whatever server tokenizes the text.
_MINIMUM_WORD_LENGTH = 3
_MAXIMUM_WORD_LENGTH = 9


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are time.perf_counter() seconds."""

    send_time: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried output
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None
    text: str = ""

    def to_json(self) -> dict:
        return {"send_time": self.send_time, "chunk_times": self.chunk_times, "output_tokens": self.output_tokens,
                "prompt_tokens": self.prompt_tokens, "error": self.error}

    @staticmethod
    def from_json(value: dict) -> "RequestRecord":
        return RequestRecord(send_time=value["send_time"], chunk_times=list(value["chunk_times"]),
                             output_tokens=value["output_tokens"], prompt_tokens=value["prompt_tokens"],
                             error=value.get("error"))


# ---------------------------------------------------------------------------------------------- prompts


def single_token_words(tokenizer_json: Path) -> tuple[object, list[str]]:
    """The tokenizer and the words w (sorted) for which encode(" " + w) is exactly one token."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    candidates = []
    for piece in tokenizer.get_vocab():
        # "Ġ" is byte-level BPE's visible form of a leading space.
        if piece.startswith("Ġ"):
            word = piece[1:]
            if _MINIMUM_WORD_LENGTH <= len(word) <= _MAXIMUM_WORD_LENGTH and word.isascii() and word.isalpha() \
                    and word.islower():
                candidates.append(word)
    candidates.sort()
    encoded = tokenizer.encode_batch([" " + word for word in candidates], add_special_tokens=False)
    words = [word for word, encoding in zip(candidates, encoded) if len(encoding.ids) == 1]
    if len(words) < 100:
        raise RuntimeError(f"single_token_words({tokenizer_json}): expected at least 100 one-token words, "
                           f"got {len(words)}")
    return tokenizer, words


def build_prompts(tokenizer_json: Path, count: int, prompt_tokens: int, seed: int,
                  prefix: str = "") -> list[str]:
    """`count` texts of exactly `prompt_tokens` tokens each (without special tokens), the same for the
    same seed. `prefix` (already a whole number of tokens) is prepended and counts toward the length."""
    tokenizer, words = single_token_words(tokenizer_json)
    prefix_tokens = len(tokenizer.encode(prefix, add_special_tokens=False).ids) if prefix else 0
    if prefix_tokens > prompt_tokens:
        raise ValueError(f"build_prompts: prefix has {prefix_tokens} tokens, more than prompt_tokens={prompt_tokens}")
    generator = random.Random(seed)
    prompts = []
    for index in range(count):
        text = prefix + "".join(" " + generator.choice(words) for _ in range(prompt_tokens - prefix_tokens))
        actual = len(tokenizer.encode(text, add_special_tokens=False).ids)
        if actual != prompt_tokens:
            raise RuntimeError(f"build_prompts: prompt {index} encodes to {actual} tokens, expected {prompt_tokens}")
        prompts.append(text)
    return prompts


def encode_prompts(tokenizer_json: Path, prompts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    return [encoding.ids for encoding in tokenizer.encode_batch(prompts, add_special_tokens=False)]


# ---------------------------------------------------------------------------------------------- HTTP client


def require_loopback(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an http:// URL whose host is a loopback address; raises otherwise.
    The benchmark never sends load anywhere but this machine."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http":
        raise ValueError(f"require_loopback({url}): expected an http:// URL, got scheme {parsed.scheme!r}")
    host = parsed.hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, parsed.port or 80, proto=socket.IPPROTO_TCP)}
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
            raise ValueError(f"require_loopback({url}): host {host} resolves to {address}, expected a loopback address")
    return host, parsed.port or 80, parsed.path.rstrip("/")


async def _read_headers(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"bad HTTP status line {status_line!r}")
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]):
    """Yields the response body as it arrives (chunked, sized, or until the server closes)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            piece = await reader.readexactly(size)
            await reader.readexactly(2)
            yield piece
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            piece = await reader.read(min(remaining, 65536))
            if not piece:
                return
            remaining -= len(piece)
            yield piece
    else:
        while True:
            piece = await reader.read(65536)
            if not piece:
                return
            yield piece


async def http_request(url: str, method: str = "GET", body: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """A small non-streaming request (health checks, /v1/models, /metrics)."""
    host, port, path = require_loopback(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                f"Content-Length: {len(payload)}\r\n" + ("Content-Type: application/json\r\n" if body is not None else "")
                + "\r\n")
        writer.write(head.encode() + payload)
        await writer.drain()
        status, headers = await asyncio.wait_for(_read_headers(reader), timeout)
        pieces = []
        async for piece in _body_pieces(reader, headers):
            pieces.append(piece)
        return status, b"".join(pieces)
    finally:
        writer.close()


def _chunk_has_output(event: dict, chat: bool) -> bool:
    """Whether an SSE chunk carries output, by vLLM's rule (`_choice_has_streamed_output`): for chat,
    the opening {role: "assistant", content: ""} delta does not count."""
    for choice in event.get("choices") or []:
        if not chat:
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
        if delta.get("content") == "" and "role" not in delta:
            return True
    return False


async def stream_request(url: str, payload: dict, chat: bool, record: RequestRecord, timeout: float) -> None:
    """POSTs one streaming request and fills `record` (send time, chunk times, usage, errors)."""
    host, port, path = require_loopback(url)
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        record.send_time = time.perf_counter()
        writer.write(head + body)
        await writer.drain()
        status, headers = await asyncio.wait_for(_read_headers(reader), timeout)
        buffer = b""
        texts = []
        async for piece in _body_pieces(reader, headers):
            now = time.perf_counter()
            buffer += piece
            if status != 200:
                continue
            while b"\n\n" in buffer:
                event_bytes, buffer = buffer.split(b"\n\n", 1)
                for line in event_bytes.split(b"\n"):
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        record.error = json.dumps(event["error"])[:300]
                        continue
                    if _chunk_has_output(event, chat):
                        record.chunk_times.append(now)
                        for choice in event["choices"]:
                            texts.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
                    usage = event.get("usage")
                    if usage:
                        record.output_tokens = usage.get("completion_tokens", 0)
                        record.prompt_tokens = usage.get("prompt_tokens", 0)
        if status != 200:
            record.error = f"HTTP {status}: {buffer[:300].decode(errors='replace')}"
        elif not record.chunk_times and record.error is None:
            record.error = "stream ended without output"
        record.text = "".join(texts)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        record.error = f"{type(error).__name__}: {error}"
    finally:
        if writer is not None:
            writer.close()


def arrival_offsets(count: int, request_rate: float, seed: int, burstiness: float = 1.0) -> list[float]:
    """Seconds after the start at which each request arrives: all at 0 for an infinite rate, else
    gamma-distributed gaps with mean 1/rate (shape 1 = Poisson, as vLLM's --burstiness)."""
    if math.isinf(request_rate):
        return [0.0] * count
    generator = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += generator.gammavariate(burstiness, 1.0 / (request_rate * burstiness))
    return offsets


async def run_open_loop(url: str, payloads: list[dict], chat: bool, request_rate: float, max_concurrency: int,
                        time_limit_seconds: float, seed: int = 0,
                        request_timeout: float = 600.0) -> tuple[list[RequestRecord], float]:
    """Sends `payloads` at their arrival times, at most `max_concurrency` in flight (a request that
    arrives while the limit is reached waits, as with vLLM's --max-concurrency). No request starts
    after `time_limit_seconds`; those still running then are cancelled at twice that and count as
    failed. Returns the records of the requests that started, and the wall time."""
    semaphore = asyncio.Semaphore(max_concurrency)
    offsets = arrival_offsets(len(payloads), request_rate, seed)
    start = time.perf_counter()
    deadline = start + time_limit_seconds
    records: list[RequestRecord] = []

    async def one(offset: float, payload: dict) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        async with semaphore:
            if time.perf_counter() > deadline:
                return
            record = RequestRecord(send_time=time.perf_counter())
            records.append(record)
            await stream_request(url, payload, chat, record, request_timeout)

    tasks = [asyncio.create_task(one(offset, payload)) for offset, payload in zip(offsets, payloads)]
    done, pending = await asyncio.wait(tasks, timeout=2 * time_limit_seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for record in records:
        if record.error is None and (not record.chunk_times or record.output_tokens == 0):
            record.error = record.error or "cancelled at the time limit"
    finished = [record.chunk_times[-1] for record in records if record.chunk_times]
    duration = (max(finished) if finished else time.perf_counter()) - start
    return records, duration


# ---------------------------------------------------------------------------------------------- metrics


def _percentile(values: list[float], percent: float) -> float:
    """Linear interpolation between closest ranks, as numpy.percentile's default."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _distribution(name: str, values_seconds: list[float]) -> dict:
    values = [value * 1000.0 for value in values_seconds]
    return {f"mean_{name}_ms": statistics.fmean(values) if values else float("nan"),
            f"median_{name}_ms": statistics.median(values) if values else float("nan"),
            f"p99_{name}_ms": _percentile(values, 99)}


def summarize(records: list[RequestRecord], duration_seconds: float, expected_output_tokens: int | None = None) -> dict:
    """vLLM's BenchmarkMetrics from per-request records. A request whose usage reports a different
    output length than expected counts as failed: the comparison needs the same work from everyone."""
    completed = []
    failures = []
    for record in records:
        if record.error is None and expected_output_tokens is not None and record.output_tokens != expected_output_tokens:
            record.error = f"expected {expected_output_tokens} output tokens, got {record.output_tokens}"
        (failures if record.error else completed).append(record)
    ttfts, tpots, itls, e2els = [], [], [], []
    for record in completed:
        ttft = record.chunk_times[0] - record.send_time
        e2el = record.chunk_times[-1] - record.send_time
        ttfts.append(ttft)
        e2els.append(e2el)
        if record.output_tokens > 1:
            tpots.append((e2el - ttft) / (record.output_tokens - 1))
        itls.extend(later - earlier for earlier, later in zip(record.chunk_times, record.chunk_times[1:]))
    total_input = sum(record.prompt_tokens for record in completed)
    total_output = sum(record.output_tokens for record in completed)
    duration = max(duration_seconds, 1e-9)
    metrics = {
        "completed": len(completed),
        "failed": len(failures),
        "duration_s": duration_seconds,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(completed) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        metrics.update(_distribution(name, values))
    if failures:
        metrics["first_error"] = failures[0].error
    return metrics


# ---------------------------------------------------------------------------------------------- servers


async def wait_until_ready(models_url: str, timeout_seconds: float) -> None:
    """Polls GET {base}/models until it answers 200 (a server loading its weights answers 503)."""
    deadline = time.perf_counter() + timeout_seconds
    last = ""
    while time.perf_counter() < deadline:
        try:
            status, body = await http_request(models_url, timeout=5)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, asyncio.TimeoutError, ConnectionError) as error:
            last = str(error)
        await asyncio.sleep(0.5)
    raise TimeoutError(f"wait_until_ready({models_url}): not ready after {timeout_seconds} s ({last})")


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


class LlamaServer:
    """llama.cpp's `llama-server` on a free loopback port, started and stopped by the benchmark.

    with LlamaServer(binary, gguf, parallel=8, context=2048, threads=2, log_path=path) as server:
        url = server.base_url  # http://127.0.0.1:PORT/v1
    """

    def __init__(self, binary: Path, gguf: Path, parallel: int, context: int, threads: int, log_path: Path,
                 ready_timeout_seconds: float = 300.0) -> None:
        self.port = free_loopback_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
                        "--parallel", str(parallel), "-c", str(context), "-t", str(threads), "-tb", str(threads)]
        self.log_path = log_path
        self.ready_timeout_seconds = ready_timeout_seconds
        self.process = None

    def __enter__(self) -> "LlamaServer":
        import subprocess

        log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            asyncio.run(wait_until_ready(self.base_url + "/models", self.ready_timeout_seconds))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exception) -> None:
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class FlotillaMesh:
    """A local Flotilla mesh brought up by `flotilla up --serve FOLDER=NAME` in its own data directory,
    and taken down by `flotilla down`. `base_url` is the gateway's OpenAI API; `worker_metrics_urls`
    are the workers' Prometheus endpoints.
    """

    def __init__(self, binary: Path, model_folder: Path, name: str, data_directory: Path, log_path: Path,
                 timeout_seconds: int = 600, kernels: str = "") -> None:
        self.binary = binary
        self.kernels = kernels  # `flotilla serve --kernels`; empty: the worker's default mapping
        self.model_folder = model_folder
        self.name = name
        self.data_directory = data_directory
        self.log_path = log_path
        self.timeout_seconds = timeout_seconds
        self.base_url = ""
        self.worker_metrics_urls: list[str] = []

    def __enter__(self) -> "FlotillaMesh":
        import subprocess

        with open(self.log_path, "w") as log:
            if not self.kernels:
                subprocess.run([str(self.binary), "up", "--data-dir", str(self.data_directory), "--port-base", "0",
                                "--serve", f"{self.model_folder}={self.name}"], stdout=log, stderr=subprocess.STDOUT,
                               check=True, timeout=self.timeout_seconds)
            else:
                subprocess.run([str(self.binary), "up", "--data-dir", str(self.data_directory), "--port-base", "0"],
                               stdout=log, stderr=subprocess.STDOUT, check=True, timeout=self.timeout_seconds)
                subprocess.run([str(self.binary), "serve", str(self.model_folder), "--name", self.name, "--kernels",
                                self.kernels, "--data-dir", str(self.data_directory)], stdout=log,
                               stderr=subprocess.STDOUT, check=True, timeout=self.timeout_seconds)
        try:
            status = json.loads(subprocess.run([str(self.binary), "status", "--data-dir", str(self.data_directory),
                                                "--json"], capture_output=True, text=True, check=True).stdout)
            gateway = next(service for service in status["services"] if service["name"] == "gateway")
            self.base_url = f"http://{gateway['http_address']}/v1"
            self.worker_metrics_urls = [f"http://{worker['http_address']}/metrics" for worker in status["workers"]
                                        if worker.get("name") == self.name and worker.get("http_address")]
            asyncio.run(wait_until_ready(self.base_url + "/models", 60))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exception) -> None:
        import subprocess

        subprocess.run([str(self.binary), "down", "--data-dir", str(self.data_directory)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)


def completion_payload(model: str, prompt: str, output_tokens: int, chat: bool, top_p: float | None = None,
                       seed: int = 0) -> dict:
    """A streaming request that must produce exactly `output_tokens` tokens: `ignore_eos` (vLLM's
    and llama-server's extension) with a fixed `max_tokens`. Greedy, or with `top_p` a seeded draw
    at temperature 1 from the nucleus."""
    payload = {"model": model, "max_tokens": output_tokens, "temperature": 0.0, "stream": True,
               "stream_options": {"include_usage": True}, "ignore_eos": True}
    if top_p is not None:
        payload.update({"temperature": 1.0, "top_p": top_p, "seed": seed})
    if chat:
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    return payload


def prometheus_sample(text: str, metric: str) -> float | None:
    """Sum of every sample of `metric` (all label sets) in Prometheus text format; None if absent."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == metric:
            total += float(line.rsplit(" ", 1)[-1])
            found = True
    return total if found else None
