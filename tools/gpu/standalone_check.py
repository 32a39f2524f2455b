#!/usr/bin/env python3
"""The CUDA kernels checked and timed on a GPU host that cannot run the project's binaries.

The GPU machine this workplace sometimes lends has its own torch (not the project's LibTorch), none
of the services' libraries and no network (tools/gpu/README.md), so check.sh cannot run there. The
kernels in kernels/cuda/cuda_kernels.cu need no ATen, though: this script compiles them with the
host's nvcc, together with kernels/cuda/standalone_api.cu (a plain C entry point per launcher), into
one shared library, and calls it through ctypes on tensors of the host's torch:

- correctness: each kernel against its formula evaluated in float64 on random non-zero inputs, in
  float32 / bfloat16 / float16 (within 1e-5 for float32, four roundings of the dtype otherwise,
  relative to the largest reference magnitude); paged attention over scattered blocks for decode,
  ragged prompt chunks, grouped-query, sliding window, softcap and a context split;
- speed: the device-to-device copy bandwidth (torch's copy_ of 1 GiB, read + write) first, then per
  kernel the eager torch ops and the kernel timed with CUDA events after warm-up (median of 7
  repeats), the kernel's bandwidth as a fraction of the copy's (RMSNorm and SiLU-and-mul at hidden
  4096 x 16k tokens, target >= 80%); paged decode (batch 32, 1k context) against sdpa on equal
  shapes with contiguous keys and values.

Prints a markdown table (also written to $OUT/kernels_standalone.md when $OUT is set, as on the
lent machine); exits 1 if any correctness check fails. The numbers are the lent card's; they do not
go into kernels/RESULTS.md, which only check.sh writes.

    python3 tools/gpu/standalone_check.py [--quick]      # on the GPU host
    python3 tools/gpu/standalone_check.py --compile-only # anywhere with nvcc: builds the library
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
SOURCES = [REPOSITORY / "kernels/cuda/cuda_kernels.cu", REPOSITORY / "kernels/cuda/standalone_api.cu"]


def build_library(folder: Path, architecture: str) -> Path:
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    library = folder / "libflotilla_cuda_kernels.so"
    # The CUDA runtime linked statically: the host's torch brings its own; both use the device's
    # primary context, so torch's pointers and streams are valid here.
    command = [nvcc, "-O3", "-std=c++17", f"-arch={architecture}", "-shared", "-Xcompiler", "-fPIC",
               "-cudart", "static", "-I", str(REPOSITORY), *map(str, SOURCES), "-o", str(library)]
    print("$", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)
    return library


class Kernels:
    """The shared library's functions, typed for ctypes."""

    def __init__(self, path: Path):
        self.library = ctypes.CDLL(str(path))
        pointer, size, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        signatures = {
            "flotilla_cuda_rms_norm": [ctypes.c_int, pointer, pointer, pointer, size, size, real, pointer],
            "flotilla_cuda_fused_add_rms_norm": [ctypes.c_int, pointer, pointer, pointer, pointer, size, size, real,
                                                 pointer],
            "flotilla_cuda_silu_and_mul": [ctypes.c_int, pointer, pointer, size, size, pointer],
            "flotilla_cuda_silu_and_mul_split": [ctypes.c_int, pointer, pointer, pointer, size, size, pointer],
            "flotilla_cuda_rotary_in_place": [ctypes.c_int, pointer, pointer, pointer, pointer, size, size, size, size,
                                              size, ctypes.POINTER(size), ctypes.POINTER(size), pointer],
            "flotilla_cuda_paged_attention": [ctypes.c_int, pointer, pointer, pointer, pointer, pointer, pointer,
                                              size, size, size, size, size, size, size, real, real, ctypes.c_int,
                                              pointer],
        }
        for name, arguments in signatures.items():
            function = getattr(self.library, name)
            function.argtypes = arguments
            function.restype = ctypes.c_int
        self.library.flotilla_cuda_paged_attention_workspace_floats.argtypes = [size] * 5
        self.library.flotilla_cuda_paged_attention_workspace_floats.restype = size

    def call(self, name: str, *arguments):
        error = getattr(self.library, name)(*arguments)
        if error != 0:
            raise RuntimeError(f"{name}: CUDA error {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes for the timings")
    parser.add_argument("--compile-only", action="store_true", help="build the library (sm_90) and load it")
    parser.add_argument("--arch", help="nvcc -arch (default: the visible GPU's, sm_90 with --compile-only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flotilla_cuda_kernels_") as folder:
        if args.compile_only:
            Kernels(build_library(Path(folder), args.arch or "sm_90"))
            print("built and loaded libflotilla_cuda_kernels.so")
            return 0

        import torch

        if not torch.cuda.is_available():
            print("standalone_check: torch sees no GPU here", file=sys.stderr)
            return 2
        major, minor = torch.cuda.get_device_capability()
        kernels = Kernels(build_library(Path(folder), args.arch or f"sm_{major}{minor}"))
        return Check(kernels, torch, quick=args.quick).run()


class Check:
    def __init__(self, kernels: Kernels, torch, quick: bool):
        self.kernels, self.torch, self.quick = kernels, torch, quick
        self.rows: list[str] = []
        self.failures: list[str] = []
        self.copy_gigabytes_per_second = 0.0

    # -- helpers ---------------------------------------------------------------------------------
    def stream(self):
        return ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)

    @staticmethod
    def type_code(dtype) -> int:
        import torch

        return {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[dtype]

    def time_ms(self, function, calls: int = 20) -> float:
        torch = self.torch
        for _ in range(5):
            function()
        samples = []
        for _ in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                function()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / calls)
        return statistics.median(samples)

    def bound(self, dtype) -> float:
        torch = self.torch
        unit = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
        return 1e-5 + 4 * unit

    def relative_error(self, actual, reference) -> float:
        reference = reference.double()
        scale = max(reference.abs().max().item(), 1e-300) if reference.numel() else 1.0
        return (actual.double() - reference).abs().max().item() / scale if reference.numel() else 0.0

    def expect(self, what: str, dtype, error: float) -> str:
        within = error <= self.bound(dtype)
        if not within:
            self.failures.append(f"{what} {dtype}: relative error {error:.2e} > {self.bound(dtype):.1e}")
        return "yes" if within else "**no**"

    def row(self, kernel, shape, dtype, baseline, baseline_ms, kernel_ms, nbytes, error, within):
        gigabytes_per_second = nbytes / (kernel_ms * 1e-3) / 1e9
        self.rows.append(
            f"| {kernel} | {shape} | {str(dtype).replace('torch.', '')} | {baseline} | {baseline_ms * 1e3:.1f} | "
            f"{kernel_ms * 1e3:.1f} | {baseline_ms / kernel_ms:.2f}x | {gigabytes_per_second:.0f} | "
            f"{100 * gigabytes_per_second / self.copy_gigabytes_per_second:.0f}% | {error:.1e} | {within} |")
        print(self.rows[-1], flush=True)

    # -- the checks ------------------------------------------------------------------------------
    def run(self) -> int:
        torch = self.torch
        torch.manual_seed(0)
        source = torch.ones(1 << 30, dtype=torch.uint8, device="cuda")
        destination = torch.empty_like(source)
        copy_ms = self.time_ms(lambda: destination.copy_(source), calls=10)
        self.copy_gigabytes_per_second = 2 * source.numel() / (copy_ms * 1e-3) / 1e9
        del source, destination
        properties = torch.cuda.get_device_properties(0)
        header = [f"Device: {properties.name} ({properties.multi_processor_count} SMs), torch {torch.__version__}. "
                  f"Device-to-device copy (1 GiB, read + write): {self.copy_gigabytes_per_second:.0f} GB/s.", "",
                  "| kernel | shape | dtype | against | baseline µs | kernel µs | speedup | kernel GB/s | of copy "
                  "bandwidth | error vs float64 | within tolerance |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        print("\n".join(header), flush=True)
        tokens = 1024 if self.quick else 16384
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            self.elementwise(tokens, 4096, dtype)
            self.rotary(tokens, 32, 8, 128, dtype)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            self.paged_correctness(dtype)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            self.paged_decode(32, 256 if self.quick else 1024, 32, 8, 128, dtype)
        self.paged_decode(4, 1024 if self.quick else 16384, 32, 8, 128, torch.bfloat16)
        text = "\n".join(header + self.rows) + "\n"
        if self.failures:
            text += "\nFailed:\n" + "\n".join(f"- {failure}" for failure in self.failures) + "\n"
        if os.environ.get("OUT"):
            (Path(os.environ["OUT"]) / "kernels_standalone.md").write_text(text)
        for failure in self.failures:
            print("FAILED:", failure, file=sys.stderr)
        return 1 if self.failures else 0

    def elementwise(self, tokens: int, hidden: int, dtype):
        torch = self.torch
        shape = f"{tokens}x{hidden}"
        code, epsilon = self.type_code(dtype), 1e-6
        x = (torch.randn(tokens, hidden, device="cuda") + 0.1).to(dtype)
        weight = (torch.rand(hidden, device="cuda") + 0.5).to(dtype)
        output = torch.empty_like(x)

        def rms_norm():
            self.kernels.call("flotilla_cuda_rms_norm", code, x.data_ptr(), weight.data_ptr(), output.data_ptr(),
                              tokens, hidden, epsilon, self.stream())

        def eager_rms_norm(values):
            as_float = values.float()
            return weight * (as_float * torch.rsqrt(as_float.pow(2).mean(-1, keepdim=True) + epsilon)).to(dtype)

        def float64_rms_norm(values):
            values = values.double()
            return weight.double() * values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + epsilon)

        rms_norm()
        error = self.relative_error(output, float64_rms_norm(x))
        self.row("RMSNorm", shape, dtype, "eager", self.time_ms(lambda: eager_rms_norm(x)), self.time_ms(rms_norm),
                 2 * x.numel() * x.element_size() + weight.numel() * weight.element_size(), error,
                 self.expect("RMSNorm", dtype, error))

        residual_start = torch.randn(tokens, hidden, device="cuda").to(dtype)
        residual = residual_start.clone()
        self.kernels.call("flotilla_cuda_fused_add_rms_norm", code, x.data_ptr(), residual.data_ptr(),
                          weight.data_ptr(), output.data_ptr(), tokens, hidden, epsilon, self.stream())
        added = residual_start.double() + x.double()
        error = max(self.relative_error(output, float64_rms_norm(added)), self.relative_error(residual, added))
        scratch = residual_start * 1e-3

        def fused():
            self.kernels.call("flotilla_cuda_fused_add_rms_norm", code, x.data_ptr(), scratch.data_ptr(),
                              weight.data_ptr(), output.data_ptr(), tokens, hidden, epsilon, self.stream())

        self.row("residual add + RMSNorm", shape, dtype, "eager",
                 self.time_ms(lambda: eager_rms_norm(residual_start + x)), self.time_ms(fused),
                 4 * x.numel() * x.element_size(), error, self.expect("residual add + RMSNorm", dtype, error))

        gate_and_up = (torch.randn(tokens, 2 * hidden, device="cuda") * 3).to(dtype)
        activated = torch.empty(tokens, hidden, device="cuda", dtype=dtype)

        def silu_and_mul():
            self.kernels.call("flotilla_cuda_silu_and_mul", code, gate_and_up.data_ptr(), activated.data_ptr(), tokens,
                              hidden, self.stream())

        silu_and_mul()
        gate64, up64 = gate_and_up.double().chunk(2, -1)
        error = self.relative_error(activated, torch.nn.functional.silu(gate64) * up64)

        def eager_silu_and_mul():
            gate, up = gate_and_up.chunk(2, -1)
            return torch.nn.functional.silu(gate) * up

        self.row("SiLU-and-mul (fused halves)", f"{tokens}x2x{hidden}", dtype, "eager",
                 self.time_ms(eager_silu_and_mul), self.time_ms(silu_and_mul), 3 * activated.numel() * x.element_size(),
                 error, self.expect("SiLU-and-mul", dtype, error))

        gate, up = (part.contiguous() for part in gate_and_up.chunk(2, -1))

        def silu_and_mul_split():
            self.kernels.call("flotilla_cuda_silu_and_mul_split", code, gate.data_ptr(), up.data_ptr(),
                              activated.data_ptr(), tokens, hidden, self.stream())

        silu_and_mul_split()
        error = self.relative_error(activated, torch.nn.functional.silu(gate.double()) * up.double())
        self.row("SiLU-and-mul (gate, up)", shape, dtype, "eager",
                 self.time_ms(lambda: torch.nn.functional.silu(gate) * up), self.time_ms(silu_and_mul_split),
                 3 * activated.numel() * x.element_size(), error, self.expect("SiLU-and-mul (gate, up)", dtype, error))

    def rotary(self, tokens: int, heads: int, kv_heads: int, head_dim: int, dtype):
        torch = self.torch
        code = self.type_code(dtype)
        # The projections' outputs [1, T, heads, head_dim] viewed [1, heads, T, head_dim].
        query = torch.randn(1, tokens, heads, head_dim, device="cuda").to(dtype).transpose(1, 2)
        key = torch.randn(1, tokens, kv_heads, head_dim, device="cuda").to(dtype).transpose(1, 2)
        angles = torch.rand(1, tokens, head_dim // 2, device="cuda") * 100
        cos = torch.cat([angles.cos(), angles.cos()], -1).to(dtype)
        sin = torch.cat([angles.sin(), angles.sin()], -1).to(dtype)
        query64, key64 = query.double(), key.double()
        query_strides = (ctypes.c_int64 * 3)(*query.stride()[:3])
        key_strides = (ctypes.c_int64 * 3)(*key.stride()[:3])

        def rotary():
            self.kernels.call("flotilla_cuda_rotary_in_place", code, query.data_ptr(), key.data_ptr(), cos.data_ptr(),
                              sin.data_ptr(), 1, tokens, head_dim, heads, kv_heads, query_strides, key_strides,
                              self.stream())

        def rotate_half(values):
            half = values.shape[-1] // 2
            return torch.cat([-values[..., half:], values[..., :half]], -1)

        rotary()
        cos64, sin64 = cos.double().unsqueeze(1), sin.double().unsqueeze(1)
        error = max(self.relative_error(query, query64 * cos64 + rotate_half(query64) * sin64),
                    self.relative_error(key, key64 * cos64 + rotate_half(key64) * sin64))

        def eager():
            c, s = cos.unsqueeze(1), sin.unsqueeze(1)
            return query * c + rotate_half(query) * s, key * c + rotate_half(key) * s

        nbytes = 2 * (query.numel() + key.numel()) * query.element_size() + 2 * cos.numel() * cos.element_size()
        self.row("rotary in place (q and k)", f"{tokens}x({heads}+{kv_heads})x{head_dim}", dtype, "eager",
                 self.time_ms(eager), self.time_ms(rotary), nbytes, error, self.expect("rotary", dtype, error))

    # -- paged attention -------------------------------------------------------------------------
    def paged_problem(self, heads, kv_heads, head_dim, block_size, sequences, window, softcap, dtype, seed):
        """Scattered blocks; each sequence's (query_length, context_length); the plan packed as
        kernels::PlanPagedAttention packs it: four int64 per token, then each block table once."""
        torch = self.torch
        generator = random.Random(seed)
        num_blocks = 2 + sum(-(-context // block_size) for _, context in sequences)
        blocks = list(range(num_blocks))
        generator.shuffle(blocks)
        tables, tokens, row = [], [], 0
        for index, (query_length, context) in enumerate(sequences):
            tables.append([blocks.pop() for _ in range(-(-context // block_size))])
            for position in range(context - query_length, context):
                first_key = max(0, position - window + 1) if window else 0
                tokens.append((row, position, first_key, index))
                row += 1
        offsets, packed = [], [0] * (4 * len(tokens))
        for table in tables:
            offsets.append(len(packed))
            packed.extend(table)
        for index, (row, position, first_key, sequence) in enumerate(tokens):
            packed[4 * index:4 * index + 4] = [row, position, first_key, offsets[sequence]]
        scale = 6.0 if softcap else 1.0
        query = (torch.randn(len(tokens), heads, head_dim, device="cuda") * scale + 0.2).to(dtype)
        key_pool = (torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda") + 0.1).to(dtype)
        value_pool = (torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda") - 0.1).to(dtype)
        plan = torch.tensor(packed or [0], dtype=torch.int64, device="cuda")
        return query, key_pool, value_pool, plan, tables, tokens

    def paged_run(self, query, key_pool, value_pool, plan, tokens, softcap, splits=None):
        torch = self.torch
        num_tokens, heads, head_dim = query.shape
        block_size, kv_heads = key_pool.shape[1], key_pool.shape[2]
        output = torch.zeros_like(query)
        if not tokens:
            return output, lambda: None
        max_keys = max(position - first_key + 1 for _, position, first_key, _ in tokens)
        items = num_tokens * kv_heads
        if splits is None:  # as kernels/cuda/cuda_dispatch.cc chooses
            wanted = 4 * torch.cuda.get_device_properties(0).multi_processor_count
            splits = min(max(-(-wanted // items), 1), max(1, max_keys // 256))
        keys_per_split = -(-max_keys // splits)  # ceil, then up to a whole tile of 32 keys
        keys_per_split = max(32, -(-keys_per_split // 32) * 32)
        splits = -(-max_keys // keys_per_split)
        floats = self.kernels.library.flotilla_cuda_paged_attention_workspace_floats(num_tokens, heads, kv_heads,
                                                                                      head_dim, splits)
        workspace = torch.empty(max(floats, 1), dtype=torch.float32, device="cuda")
        code = self.type_code(query.dtype)

        def run():
            self.kernels.call("flotilla_cuda_paged_attention", code, query.data_ptr(), key_pool.data_ptr(),
                              value_pool.data_ptr(), output.data_ptr(), plan.data_ptr(), workspace.data_ptr(),
                              num_tokens, heads, kv_heads, head_dim, block_size, splits, keys_per_split,
                              1.0 / math.sqrt(head_dim), softcap or 1.0, 1 if softcap else 0, self.stream())

        run()
        return output, run

    def paged_reference(self, query, key_pool, value_pool, tables, tokens, softcap):
        torch = self.torch
        heads, head_dim = query.shape[1], query.shape[2]
        block_size, kv_heads = key_pool.shape[1], key_pool.shape[2]
        keys_flat = key_pool.flatten(0, 1).double()
        values_flat = value_pool.flatten(0, 1).double()
        output = torch.zeros(query.shape, dtype=torch.float64, device="cuda")
        for row, position, first_key, sequence in tokens:
            slots = torch.tensor([tables[sequence][p // block_size] * block_size + p % block_size
                                  for p in range(first_key, position + 1)], device="cuda")
            keys = keys_flat[slots].permute(1, 0, 2).repeat_interleave(heads // kv_heads, 0)
            values = values_flat[slots].permute(1, 0, 2).repeat_interleave(heads // kv_heads, 0)
            scores = query[row].double().unsqueeze(1) @ keys.transpose(1, 2) / math.sqrt(head_dim)
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            output[row] = (torch.softmax(scores, -1) @ values).squeeze(1)
        return output

    def paged_correctness(self, dtype):
        cases = [
            ("one token", 4, 4, 64, 16, [(1, 1)], 0, None, None),
            ("decode, grouped-query", 8, 2, 128, 16, [(1, 37), (1, 300), (1, 16)], 0, None, None),
            ("ragged decode and chunks", 6, 2, 64, 8, [(1, 50), (5, 9), (7, 7), (1, 1), (3, 120)], 0, None, None),
            ("sliding window, head_dim 80", 4, 1, 80, 16, [(1, 200), (6, 70), (1, 3)], 24, None, None),
            ("softcap", 8, 4, 64, 16, [(1, 90), (4, 40)], 0, 5.0, None),
            ("context split", 16, 2, 128, 16, [(1, 3000), (2, 1500)], 0, None, None),
            ("context split forced, window, softcap, head_dim 256", 8, 4, 256, 32, [(1, 700), (3, 33)], 512, 30.0, 5),
        ]
        for name, heads, kv_heads, head_dim, block_size, sequences, window, softcap, splits in cases:
            query, key_pool, value_pool, plan, tables, tokens = self.paged_problem(
                heads, kv_heads, head_dim, block_size, sequences, window, softcap, dtype, seed=3)
            output, _ = self.paged_run(query, key_pool, value_pool, plan, tokens, softcap, splits)
            error = self.relative_error(output, self.paged_reference(query, key_pool, value_pool, tables, tokens,
                                                                     softcap))
            within = self.expect(f"paged attention: {name}", dtype, error)
            self.rows.append(f"| paged attention: {name} | {len(tokens)} tokens | "
                             f"{str(dtype).replace('torch.', '')} | float64 | | | | | | {error:.1e} | {within} |")
            print(self.rows[-1], flush=True)

    def paged_decode(self, batch, context, heads, kv_heads, head_dim, dtype):
        torch = self.torch
        query, key_pool, value_pool, plan, tables, tokens = self.paged_problem(
            heads, kv_heads, head_dim, 16, [(1, context)] * batch, 0, None, dtype, seed=5)
        output, run = self.paged_run(query, key_pool, value_pool, plan, tokens, None)
        # Equal shapes for sdpa: each sequence's keys and values contiguous [batch, kv_heads, context, head_dim].
        block_index = torch.tensor(tables, device="cuda")
        keys = key_pool[block_index].flatten(1, 2)[:, :context].transpose(1, 2).contiguous()
        values = value_pool[block_index].flatten(1, 2)[:, :context].transpose(1, 2).contiguous()
        query4 = query.unsqueeze(2)  # [batch, heads, 1, head_dim]

        def sdpa():
            return torch.nn.functional.scaled_dot_product_attention(query4, keys, values, scale=1 / math.sqrt(head_dim),
                                                                    enable_gqa=True)

        weights = torch.softmax(query4.double() @ keys.double().repeat_interleave(heads // kv_heads, 1)
                                .transpose(2, 3) / math.sqrt(head_dim), -1)
        reference = (weights @ values.double().repeat_interleave(heads // kv_heads, 1)).squeeze(2)
        error = self.relative_error(output, reference)
        nbytes = 2 * keys.numel() * keys.element_size() + 2 * query.numel() * query.element_size()
        self.row("paged decode attention", f"batch {batch} ctx {context} {heads}/{kv_heads}x{head_dim}", dtype,
                 "sdpa, contiguous KV", self.time_ms(sdpa), self.time_ms(run), nbytes, error,
                 self.expect("paged decode", dtype, error))


if __name__ == "__main__":
    sys.exit(main())
