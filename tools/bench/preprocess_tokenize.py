"""Tokenize RPC throughput: the preprocess service (a real flotilla-preprocess process, models named by
registry reference or local folder) vs the Python `tokenizers` library in this process, on the same
generated multilingual corpus and the same tokenizer.json (SmolLM2's by default).

    python tools/bench/preprocess_tokenize.py [--megabytes 5] [--batch 64] [--clients 4]

Timed, per contender, over the whole corpus:
- tokenizers `encode_batch` on batches of --batch texts (all cores), and `encode` per text (one thread);
- the Tokenize RPC with --batch texts per call: one client calling in turn, then --clients threads
  calling at once; once with a registry reference (every call resolves the branch at the registry)
  and once with a local folder (--allow_local_paths);
- one short text per call (latency of a whole round trip vs one `encode`).
The RPC numbers include gRPC, protobuf (de)serialisation in Python and the service's byte offsets;
token counts must agree with tokenizers'. Prints a table (and JSON lines with --json).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "tests"))
sys.path.insert(0, str(REPOSITORY / "tests" / "fixtures" / "tokenizer"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def generate_stubs(output: Path):
    from grpc_tools import protoc  # noqa: PLC0415

    protos = sorted(str(p.relative_to(REPOSITORY / "proto")) for p in (REPOSITORY / "proto").rglob("*.proto"))
    protos = [p for p in protos if not p.startswith("grpc/")]
    assert protoc.main(["protoc", f"-I{REPOSITORY / 'proto'}", f"--python_out={output}",
                        f"--grpc_python_out={output}", *protos]) == 0
    sys.path.insert(0, str(output))
    load = importlib.import_module
    return (load("flotilla.v1.common_pb2"), load("flotilla.v1.registry_pb2"), load("flotilla.v1.registry_pb2_grpc"),
            load("flotilla.v1.preprocess_pb2"), load("flotilla.v1.preprocess_pb2_grpc"))


def push(registry_pb2, registry_stub, folder: Path, namespace: str, name: str) -> None:
    registry_stub.CreateRepository(registry_pb2.CreateRepositoryRequest(namespace=namespace, name=name, kind=1,
                                                                        exist_ok=True))
    entries = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        entries.append(registry_pb2.FileEntry(path=path.name, size=len(data), sha256=digest))
        chunks = [registry_pb2.UploadBlobRequest(sha256=digest, size=len(data), offset=0, namespace=namespace,
                                                 name=name, data=data[:1 << 20])]
        chunks += [registry_pb2.UploadBlobRequest(data=data[i:i + (1 << 20)]) for i in range(1 << 20, len(data), 1 << 20)]
        registry_stub.UploadBlob(iter(chunks))
    registry_stub.CreateCommit(registry_pb2.CreateCommitRequest(namespace=namespace, name=name, branch="main",
                                                                message="bench", files=entries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--short-calls", type=int, default=2000)
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with tokenizer.json (default: SmolLM2's)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()

    import grpc  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415

    import make_tokenizers  # noqa: PLC0415
    from conftest import launch_service  # noqa: PLC0415
    from tokenizer_encode import make_corpus  # noqa: PLC0415

    folder = arguments.tokenizer or make_tokenizers.main() / "smollm2"
    texts = make_corpus(arguments.megabytes)
    total_bytes = sum(len(t.encode()) for t in texts)
    batches = [texts[i:i + arguments.batch] for i in range(0, len(texts), arguments.batch)]
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rows = []

    def record(contender: str, seconds: float, tokens: int, calls: int) -> None:
        rows.append({"contender": contender, "seconds": seconds, "megabytes_per_second": total_bytes / seconds / 1e6,
                     "tokens_per_second": tokens / seconds, "tokens": tokens, "calls": calls})

    start = time.perf_counter()
    expected_tokens = sum(len(e.ids) for batch in batches for e in reference.encode_batch(batch))
    record(f"tokenizers encode_batch({arguments.batch})", time.perf_counter() - start, expected_tokens, len(batches))
    start = time.perf_counter()
    tokens = sum(len(reference.encode(text).ids) for text in texts)
    record("tokenizers encode (1 thread)", time.perf_counter() - start, tokens, len(texts))

    common_pb2, registry_pb2, registry_grpc, preprocess_pb2, preprocess_grpc = generate_stubs(
        Path(tempfile.mkdtemp(prefix="flotilla-bench-stubs-")))
    work = Path(tempfile.mkdtemp(prefix="flotilla-bench-preprocess-"))
    registry = launch_service("registry", work)
    preprocess = launch_service("preprocess", work, [f"--registry={registry.grpc_address}", "--allow_local_paths"])
    try:
        push(registry_pb2, registry_grpc.RegistryServiceStub(grpc.insecure_channel(registry.grpc_address)), folder,
             "bench", "tokenizer")
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        channel = grpc.insecure_channel(preprocess.grpc_address, options=options)
        stub = preprocess_grpc.PreprocessServiceStub(channel)
        models = {"registry ref": common_pb2.ModelReference(namespace="bench", name="tokenizer", revision="main"),
                  "local folder": common_pb2.ModelReference(local_path=str(folder))}
        for label, model in models.items():
            stub.Tokenize(preprocess_pb2.TokenizeRequest(model=model, texts=["warm up"]))  # loads the model

            def call(batch, model=model):
                response = stub.Tokenize(preprocess_pb2.TokenizeRequest(model=model, texts=batch,
                                                                        add_special_tokens=True))
                return sum(len(e.ids) for e in response.encodings)

            start = time.perf_counter()
            tokens = sum(call(batch) for batch in batches)
            record(f"Tokenize RPC {label}, batch {arguments.batch}, 1 client", time.perf_counter() - start, tokens,
                   len(batches))
            assert tokens == expected_tokens, (tokens, expected_tokens)
            start = time.perf_counter()
            with ThreadPoolExecutor(arguments.clients) as pool:
                tokens = sum(pool.map(call, batches))
            record(f"Tokenize RPC {label}, batch {arguments.batch}, {arguments.clients} clients",
                   time.perf_counter() - start, tokens, len(batches))
            assert tokens == expected_tokens

        # One short text per call: round-trip latency against one in-process encode.
        short = "Hello, how are you today? Привет! 你好"
        model = models["registry ref"]
        latencies = []
        for _ in range(arguments.short_calls):
            begin = time.perf_counter()
            stub.Tokenize(preprocess_pb2.TokenizeRequest(model=model, texts=[short], add_special_tokens=True))
            latencies.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        for _ in range(arguments.short_calls):
            reference.encode(short)
        encode_seconds = (time.perf_counter() - begin) / arguments.short_calls
        latency = {"rpc_p50_ms": statistics.median(latencies) * 1e3,
                   "rpc_p99_ms": sorted(latencies)[int(0.99 * len(latencies)) - 1] * 1e3,
                   "tokenizers_encode_ms": encode_seconds * 1e3}
        channel.close()
    finally:
        preprocess.stop()
        registry.stop()

    baseline = rows[0]["megabytes_per_second"]
    if arguments.json:
        for row in rows:
            print(json.dumps(row))
        print(json.dumps({"short_text_latency": latency}))
    print(f"corpus: {len(texts)} texts, {total_bytes / 1e6:.1f} MB, {expected_tokens} tokens; tokenizer {folder}")
    print(f"{'contender':<55} {'MB/s':>8} {'tokens/s':>12} {'vs encode_batch':>16}")
    for row in rows:
        print(f"{row['contender']:<55} {row['megabytes_per_second']:>8.2f} {row['tokens_per_second']:>12.0f} "
              f"{row['megabytes_per_second'] / baseline:>15.2f}x")
    print(f"one short text per call: RPC p50 {latency['rpc_p50_ms']:.3f} ms, p99 {latency['rpc_p99_ms']:.3f} ms; "
          f"tokenizers encode {latency['tokenizers_encode_ms']:.4f} ms")


if __name__ == "__main__":
    main()
