// Tensor-parallel plans as data: glob patterns of module names mapped to a sharding strategy, as
// transformers' `base_model_tp_plan`. The loader shards each weight for rank r of N by the plan;
// the collectives that follow each module come with serving (the worker), not here.
//
//   ASSIGN_OR_RETURN(TensorParallelPlan plan, TensorParallelPlan::FromJson({
//       {"layers.*.self_attn.q_proj", "colwise"}, {"layers.*.self_attn.o_proj", "rowwise"}}));
//   plan.Match("layers.3.self_attn.q_proj");   // ParallelStyle::kColwise
//   ASSIGN_OR_RETURN(auto shards, LoadShardedStateDict(*checkpoint, plan, "model.", rank, world_size));
//
// Strategies: colwise (split the output dim: weight dim 0, bias dim 0), rowwise (split the input
// dim: weight dim 1, bias replicated; its input arrives split, from a colwise layer),
// rowwise_split_input (sharded as rowwise, but its input arrives whole and each rank takes its
// slice: phi3's o_proj after a gathered qkv_proj), packed_colwise / packed_rowwise (a fused weight, e.g.
// gate_up_proj, whose halves are split separately so each rank gets matching pieces),
// colwise_gather_output (the lm_head: colwise, gathered after), vocab_parallel (embedding rows),
// replicated. `*` matches one dotted component (a layer index).
//
// GPT-2's Conv1D stores its weight transposed ([in, out], bias [out]), so the same splits fall on
// the other dimension: conv1d_colwise (weight dim 1, bias dim 0), conv1d_rowwise (weight dim 0,
// bias replicated) and conv1d_packed_colwise (c_attn's fused [q | k | v] columns: each third split
// separately, weight dim 1 and bias dim 0).
//
// Thread-safety: immutable after construction.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "models/safetensors.h"

namespace flotilla::models {

enum class ParallelStyle {
  kColwise,
  kRowwise,
  kRowwiseSplitInput,
  kPackedColwise,
  kPackedRowwise,
  kColwiseGatherOutput,
  kVocabParallel,
  kReplicated,
  kConv1DColwise,
  kConv1DRowwise,
  kConv1DPackedColwise,
};

// How many equal parts a packed style's fused tensor holds: 2 for packed_colwise / packed_rowwise
// (gate_up_proj), 3 for conv1d_packed_colwise (c_attn's q, k, v); 1 for the others.
int64_t PackedParts(ParallelStyle style);

absl::StatusOr<ParallelStyle> ParseParallelStyle(std::string_view name);
std::string ParallelStyleName(ParallelStyle style);

class TensorParallelPlan {
 public:
  TensorParallelPlan() = default;
  static absl::StatusOr<TensorParallelPlan> FromJson(const nlohmann::json& plan);
  nlohmann::json ToJson() const;

  void Add(std::string pattern, ParallelStyle style) { entries_.emplace_back(std::move(pattern), style); }
  // The first matching entry's style for a module name ("layers.3.mlp.up_proj").
  std::optional<ParallelStyle> Match(std::string_view module_name) const;
  bool empty() const { return entries_.empty(); }
  const std::vector<std::pair<std::string, ParallelStyle>>& entries() const { return entries_; }

 private:
  std::vector<std::pair<std::string, ParallelStyle>> entries_;
};

bool GlobMatchesModuleName(std::string_view pattern, std::string_view module_name);

// Rank `rank`'s shard of `full` (a parameter named `...weight` or `...bias`) under `style`.
// Sizes that the world size does not divide are an error naming the tensor. packed_parts 0 means
// PackedParts(style).
absl::StatusOr<at::Tensor> ShardParameter(const at::Tensor& full, std::string_view parameter_name,
                                          ParallelStyle style, int64_t rank, int64_t world_size,
                                          int64_t packed_parts = 0);

// Every tensor of `checkpoint`, sharded for one rank. A tensor's module name is its key without
// the trailing ".weight"/".bias"; keys under `base_prefix` ("model.") are matched against `plan`
// with that prefix removed, others against `top_level_plan` (e.g. {"lm_head": colwise_gather_output}).
absl::StatusOr<std::map<std::string, at::Tensor>> LoadShardedStateDict(const SafetensorsCheckpoint& checkpoint,
                                                                       const TensorParallelPlan& plan,
                                                                       const TensorParallelPlan& top_level_plan,
                                                                       std::string_view base_prefix, int64_t rank,
                                                                       int64_t world_size);

}  // namespace flotilla::models
