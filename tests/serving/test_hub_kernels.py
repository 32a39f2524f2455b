"""Hub kernels end to end: a kernel repository built by tools/kernels/build_kernel.py from the
example third-party kernel (kernels/examples/rmsnorm_c, plain C against kernels/abi only), pushed
with `flotilla push --kind kernel` to a real registry, pulled, verified, dlopen'ed and self-checked
by a real worker serving a model. The metric shows the hub source and greedy outputs do not
change; an ABI mismatch, a repository with only another platform's variant, and a corrupt library
are each refused with a log line and the eager forward kept.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import REPOSITORY, binary
from .test_serving import generate_ids

BUILD_KERNEL = REPOSITORY / "tools" / "kernels" / "build_kernel.py"
EXAMPLE = REPOSITORY / "kernels" / "examples" / "rmsnorm_c"


def build_repository(source: Path, output: Path, *flags: str) -> Path:
    subprocess.run([sys.executable, str(BUILD_KERNEL), str(source), "--output", str(output), *flags],
                   check=True, capture_output=True, text=True)
    return output


def push(registry, folder: Path, reference: str) -> str:
    result = subprocess.run([str(binary("flotilla")), "push", str(folder), reference, "--kind", "kernel", "--json",
                             "--registry", registry.grpc_address], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["commit_id"]


def kernel_calls(worker) -> dict:
    """{(layer, source): count} from the worker's flotilla_kernel_forward_calls_total."""
    with urllib.request.urlopen(worker.http_url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    calls = {}
    for match in re.finditer(r'^flotilla_kernel_forward_calls_total\{layer="([^"]+)",source="([^"]+)"\} ([0-9.e+]+)$',
                             text, re.M):
        calls[(match.group(1), match.group(2))] = float(match.group(3))
    return calls


@pytest.fixture(scope="module")
def kernel_repositories(tmp_path_factory):
    """The example built as it is, and three broken ones."""
    root = tmp_path_factory.mktemp("kernel-repositories")
    good = build_repository(EXAMPLE, root / "good")

    # A library built against another ABI version (what a stale third-party build looks like).
    mismatch_source = root / "mismatch-source"
    shutil.copytree(EXAMPLE, mismatch_source)
    code = (mismatch_source / "rmsnorm.c").read_text()
    code = code.replace("{ return FLOTILLA_KERNEL_ABI_VERSION; }", "{ return FLOTILLA_KERNEL_ABI_VERSION + 41u; }")
    (mismatch_source / "rmsnorm.c").write_text(code)
    mismatch = build_repository(mismatch_source, root / "mismatch")

    # Only a CUDA variant: nothing for this CPU worker.
    other_platform = build_repository(EXAMPLE, root / "other-platform", "--variant", "torch2.15-cu130-x86_64")

    # A library whose bytes are not the ones kernel.json's sha256 names.
    corrupt = build_repository(EXAMPLE, root / "corrupt")
    library = next((corrupt / "build").glob("*/librmsnorm_c.so"))
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    return {"good": good, "mismatch": mismatch, "other_platform": other_platform, "corrupt": corrupt}


def test_a_pushed_hub_kernel_serves_the_same_greedy_tokens_and_shows_in_the_metric(
        mesh, start_service, decoder_fixtures, kernel_repositories):
    registry = start_service("registry")
    commit = push(registry, kernel_repositories["good"], "acme/rmsnorm_c")
    model = decoder_fixtures / "llama_gqa_tied"
    common = ["--kv_cache_memory=4194304", f"--registry={registry.grpc_address}"]
    eager = mesh.serve(model, "eager", "--kernels=RMSNorm=eager,SiluAndMul=eager", *common)
    hub = mesh.serve(model, "hub", "--kernels=RMSNorm=acme/rmsnorm_c,SiluAndMul=acme/rmsnorm_c@main", *common)
    assert re.search(r'"message":"kernel mapping".*"RMSNorm":"acme/rmsnorm_c@' + commit, hub.log())

    generator = random.Random(3)
    for _ in range(4):
        prompt = [generator.randint(3, 159) for _ in range(generator.randint(1, 20))]
        expected = generate_ids(mesh, "eager", prompt, 12, ignore_eos=True)
        assert generate_ids(mesh, "hub", prompt, 12, ignore_eos=True) == expected, prompt

    calls = kernel_calls(hub)
    source = f"acme/rmsnorm_c@{commit}"
    assert calls.get(("RMSNorm", source), 0) > 0 and calls.get(("SiluAndMul", source), 0) > 0, calls
    assert calls.get(("RMSNorm", "eager"), 0) == 0, calls
    assert calls.get(("RMSNorm", "eager"), 0) == 0 and kernel_calls(eager).get(("RMSNorm", "eager"), 0) > 0


@pytest.mark.parametrize("case, reason", [
    ("mismatch", "ABI version mismatch: the library has 42, this worker 1"),
    ("other_platform", "no variant for this platform"),
    ("corrupt", "is corrupt: sha256"),
])
def test_a_broken_hub_kernel_is_refused_and_the_layer_stays_eager(
        mesh, start_service, decoder_fixtures, kernel_repositories, case, reason):
    registry = start_service("registry")
    push(registry, kernel_repositories[case], f"acme/{case}")
    model = decoder_fixtures / "llama_gqa_tied"
    worker = mesh.serve(model, case, f"--kernels=RMSNorm=acme/{case}", "--kv_cache_memory=4194304",
                        f"--registry={registry.grpc_address}")
    refusals = [json.loads(line) for line in worker.log().splitlines()
                if line.startswith("{") and "hub kernel refused" in line]
    assert len(refusals) == 1 and reason in refusals[0]["reason"], worker.log()[-3000:]
    assert refusals[0]["layer"] == "RMSNorm" and refusals[0]["kernel"] == f"acme/{case}"

    ids, finish = generate_ids(mesh, case, [5, 17, 33, 8], 6, ignore_eos=True)
    assert len(ids) == 6 and finish == "length"
    calls = kernel_calls(worker)
    assert calls.get(("RMSNorm", "eager"), 0) > 0, calls
    assert not any(layer == "RMSNorm" and source.startswith("acme/") for layer, source in calls), calls


def test_a_mapping_that_does_not_parse_refuses_to_start(mesh, decoder_fixtures):
    with pytest.raises(RuntimeError) as raised:
        mesh.serve(decoder_fixtures / "llama_gqa_tied", "bad", "--kernels=LayerNorm=builtin")
    assert 'unknown layer \\"LayerNorm\\"' in str(raised.value) or 'unknown layer "LayerNorm"' in str(raised.value)
