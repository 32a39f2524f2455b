#!/usr/bin/env python3
"""Runs the CUDA paged attention kernels' own source on the CPU, against a float64 reference.

No GPU is lent to CI, so kernels/cuda/cuda_kernels.cu would otherwise only be compiled there. This
takes the source of PagedAttentionKernel and PagedAttentionMergeKernel from it verbatim (from
`constexpr int kPagedThreads` up to the next `constexpr int kThreads`), compiles it as host C++ with
each CUDA thread a std::thread: `__syncthreads` is a barrier of the block's threads,
`__shfl_xor_sync` an exchange through a barrier of the warp's 32 threads, `__shared__` storage one
copy per block (blocks run one after another). The float32 instantiation runs over decode tokens,
ragged prompt chunks, grouped-query and multi-head attention, sliding windows, softcapping, head
dims 16/64/80/128/256, and forced splits of the context (with the merge kernel), and every output
must be within 1e-5 (relative to the largest) of float64 attention over the same block tables.

What it does not check: the dtype conversions (bfloat16/float16), memory coalescing, the launch
configuration and the host-side split choice (kernels/cuda/cuda_dispatch.cc) — kernels_test's
CudaKernelTest cases do, on a GPU (tools/gpu/check.sh).

    python3 tools/gpu/emulate_paged_attention.py        # exit 0: every case within tolerance
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]

PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __launch_bounds__(threads)
struct Dimensions { unsigned x = 0, y = 0, z = 0; };
thread_local Dimensions threadIdx, blockIdx;
Dimensions blockDim, gridDim;
float dynamic_shared_memory[1 << 18];
std::barrier<>* block_barrier;
std::barrier<>* warp_barriers[32];
float warp_slots[32][32];
void __syncthreads() { block_barrier->arrive_and_wait(); }
float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  warp_slots[warp][lane] = value;
  warp_barriers[warp]->arrive_and_wait();
  const float other = warp_slots[warp][lane ^ lane_mask];
  warp_barriers[warp]->arrive_and_wait();
  return other;
}
template <typename T> float ToFloat(T value) { return static_cast<float>(value); }
template <typename T> T FromFloat(float value) { return static_cast<T>(value); }
"""

HARNESS = r"""
// A grid, block after block, on `threads` persistent std::threads.
void RunGrid(unsigned grid_x, unsigned grid_y, int threads, const std::function<void()>& kernel) {
  blockDim.x = threads;
  gridDim.x = grid_x;
  gridDim.y = grid_y;
  std::barrier<> block(threads);
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  for (int warp = 0; warp < threads / 32; ++warp) {
    warps.emplace_back(new std::barrier<>(32));
    warp_barriers[warp] = warps.back().get();
  }
  block_barrier = &block;
  std::vector<std::thread> pool;
  for (int thread = 0; thread < threads; ++thread) {
    pool.emplace_back([&, thread] {
      threadIdx.x = thread;
      for (unsigned y = 0; y < grid_y; ++y) {
        for (unsigned x = 0; x < grid_x; ++x) {
          blockIdx.x = x;
          blockIdx.y = y;
          kernel();
          block.arrive_and_wait();  // the block's shared memory is reused by the next block
        }
      }
    });
  }
  for (std::thread& thread : pool) thread.join();
}

struct Token { int64_t row, position, first_key; size_t sequence; };

int failures = 0;

void Case(const char* name, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t block_size,
          const std::vector<std::pair<int64_t, int64_t>>& sequences, int64_t window, float softcap,
          int64_t keys_per_split) {
  std::mt19937 random(7);
  std::normal_distribution<float> normal;
  int64_t num_blocks = 2;  // spare blocks nobody reads
  int64_t num_tokens = 0;
  for (const auto& [query_length, context_length] : sequences) {
    num_blocks += (context_length + block_size - 1) / block_size;
    num_tokens += query_length;
  }
  std::vector<int64_t> blocks(num_blocks);
  for (int64_t block = 0; block < num_blocks; ++block) blocks[block] = block;
  std::shuffle(blocks.begin(), blocks.end(), random);
  std::vector<std::vector<int64_t>> tables;
  std::vector<Token> tokens;
  size_t next_block = 0;
  int64_t row = 0;
  for (size_t sequence = 0; sequence < sequences.size(); ++sequence) {
    const auto [query_length, context_length] = sequences[sequence];
    tables.emplace_back();
    for (int64_t block = 0; block * block_size < context_length; ++block) tables.back().push_back(blocks[next_block++]);
    for (int64_t position = context_length - query_length; position < context_length; ++position) {
      tokens.push_back({row++, position, window > 0 ? std::max<int64_t>(0, position - window + 1) : 0, sequence});
    }
  }
  // The plan as kernels::PlanPagedAttention packs it: four int64 per token, then the block tables.
  std::vector<int64_t> plan(tokens.size() * 4);
  std::vector<int64_t> table_offsets;
  for (const std::vector<int64_t>& table : tables) {
    table_offsets.push_back(static_cast<int64_t>(plan.size()));
    plan.insert(plan.end(), table.begin(), table.end());
  }
  int64_t max_keys = 0;
  for (size_t index = 0; index < tokens.size(); ++index) {
    const Token& token = tokens[index];
    plan[index * 4] = token.row;
    plan[index * 4 + 1] = token.position;
    plan[index * 4 + 2] = token.first_key;
    plan[index * 4 + 3] = table_offsets[token.sequence];
    max_keys = std::max(max_keys, token.position - token.first_key + 1);
  }
  const int64_t pool_elements = num_blocks * block_size * kv_heads * head_dim;
  std::vector<float> query(num_tokens * heads * head_dim), keys(pool_elements), values(pool_elements);
  for (float& value : query) value = normal(random) * (softcap > 0 ? 6.f : 1.f) + 0.2f;
  for (float& value : keys) value = normal(random) + 0.1f;
  for (float& value : values) value = normal(random) - 0.1f;
  std::vector<float> output(query.size(), -999.f);

  PagedAttentionShape shape{};
  shape.num_tokens = num_tokens;
  shape.num_heads = heads;
  shape.num_key_value_heads = kv_heads;
  shape.head_dim = head_dim;
  shape.block_size = block_size;
  shape.scaling = 1.f / std::sqrt(static_cast<float>(head_dim));
  shape.has_softcap = softcap > 0;
  shape.softcap = softcap > 0 ? softcap : 1.f;
  shape.keys_per_split = keys_per_split;
  shape.num_splits = std::max<int64_t>(1, (max_keys + keys_per_split - 1) / keys_per_split);
  const int64_t groups = heads / kv_heads;
  const int64_t items = num_tokens * kv_heads;
  std::vector<float> workspace(items * shape.num_splits * (groups * head_dim + 2 * groups), -777.f);
  if (items > 0) {
    RunGrid(items, shape.num_splits, kPagedThreads, [&] {
      PagedAttentionKernel<float>(query.data(), keys.data(), values.data(), output.data(), plan.data(),
                                  workspace.data(), shape);
    });
    if (shape.num_splits > 1) {
      RunGrid(items, 1, kPagedThreads,
              [&] { PagedAttentionMergeKernel<float>(plan.data(), workspace.data(), output.data(), shape); });
    }
  }

  double worst = 0, scale = 0;
  for (const Token& token : tokens) {
    for (int64_t head = 0; head < heads; ++head) {
      const int64_t kv_head = head / groups;
      std::vector<double> weights;
      std::vector<int64_t> slots;
      double maximum = -1e300;
      for (int64_t position = token.first_key; position <= token.position; ++position) {
        const int64_t slot = tables[token.sequence][position / block_size] * block_size + position % block_size;
        double dot = 0;
        for (int64_t d = 0; d < head_dim; ++d) {
          dot += static_cast<double>(query[(token.row * heads + head) * head_dim + d]) *
                 keys[(slot * kv_heads + kv_head) * head_dim + d];
        }
        dot *= shape.scaling;
        if (softcap > 0) dot = std::tanh(dot / softcap) * softcap;
        weights.push_back(dot);
        slots.push_back(slot);
        maximum = std::max(maximum, dot);
      }
      double sum = 0;
      for (double& weight : weights) sum += (weight = std::exp(weight - maximum));
      for (int64_t d = 0; d < head_dim; ++d) {
        double expected = 0;
        for (size_t key = 0; key < slots.size(); ++key) {
          expected += weights[key] / sum * values[(slots[key] * kv_heads + kv_head) * head_dim + d];
        }
        const double actual = output[(token.row * heads + head) * head_dim + d];
        worst = std::max(worst, std::fabs(actual - expected));
        scale = std::max(scale, std::fabs(expected));
      }
    }
  }
  const double relative = worst / std::max(scale, 1e-30);
  const bool within = relative <= 1e-5;
  if (!within) ++failures;
  std::printf("%-44s tokens %3ld splits %2ld keys <= %4ld  relative error %.1e %s\n", name,
              static_cast<long>(num_tokens), static_cast<long>(shape.num_splits), static_cast<long>(max_keys),
              relative, within ? "ok" : "FAILED");
}

int main() {
  //    name                                    heads kv  dim block (query, context)...          window softcap split
  Case("empty batch", 4, 2, 32, 16, {}, 0, 0, 512);
  Case("one token", 4, 4, 64, 16, {{1, 1}}, 0, 0, 512);
  Case("decode, grouped-query", 8, 2, 128, 16, {{1, 37}, {1, 100}, {1, 16}}, 0, 0, 512);
  Case("decode, grouped-query, split by 32", 8, 2, 128, 16, {{1, 37}, {1, 100}, {1, 16}}, 0, 0, 32);
  Case("ragged decode and chunks", 6, 2, 64, 8, {{1, 50}, {5, 9}, {7, 7}, {1, 1}, {3, 70}}, 0, 0, 512);
  Case("ragged decode and chunks, split by 32", 6, 2, 64, 8, {{1, 50}, {5, 9}, {7, 7}, {1, 1}, {3, 70}}, 0, 0, 32);
  Case("sliding window, head_dim 80, split by 32", 4, 1, 80, 16, {{1, 100}, {4, 70}, {1, 3}}, 48, 0, 32);
  Case("softcap, split by 32", 4, 2, 64, 16, {{1, 90}, {3, 40}}, 0, 5.f, 32);
  Case("8 query heads per key/value head, split", 16, 2, 128, 16, {{1, 150}, {1, 40}}, 0, 0, 64);
  Case("head_dim 256, window and softcap, split", 4, 2, 256, 32, {{1, 120}, {2, 33}}, 100, 30.f, 64);
  Case("multi-head, head_dim 16, block_size 1", 3, 3, 16, 1, {{2, 40}, {1, 7}}, 0, 0, 32);
  std::printf(failures ? "%d case(s) FAILED\n" : "every case within 1e-5 of float64\n", failures);
  return failures != 0;
}
"""


def main() -> int:
    source = (REPOSITORY / "kernels/cuda/cuda_kernels.cu").read_text()
    header = (REPOSITORY / "kernels/cuda/cuda_kernels.h").read_text()
    begin, end = source.index("constexpr int kPagedThreads"), source.index("constexpr int kThreads")
    kernels = source[begin:end]
    for cuda, host in [("extern __shared__ float shared[];", "float* shared = dynamic_shared_memory;"),
                       ("__shared__ int64_t tile_rows[kKeysPerTile];", "static int64_t tile_rows[kKeysPerTile];")]:
        if cuda not in kernels:
            print(f"emulate_paged_attention: `{cuda}` is no longer in cuda_kernels.cu; update this script",
                  file=sys.stderr)
            return 2
        kernels = kernels.replace(cuda, host)
    shape = header[header.index("struct PagedAttentionShape"):header.index("int64_t PagedAttentionWorkspaceFloats")]
    compiler = os.environ.get("CXX") or shutil.which("c++") or "g++"
    with tempfile.TemporaryDirectory() as folder:
        program = Path(folder) / "emulate_paged_attention.cc"
        program.write_text(PRELUDE + shape + kernels + HARNESS)
        binary = Path(folder) / "emulate_paged_attention"
        compiled = subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", str(program), "-o", str(binary)],
                                  capture_output=True, text=True)
        if compiled.returncode != 0:
            print(compiled.stderr, file=sys.stderr)
            return 2
        return subprocess.run([str(binary)]).returncode


if __name__ == "__main__":
    sys.exit(main())
