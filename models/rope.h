// Rotary position embedding parameters and inverse frequencies, as transformers'
// modeling_rope_utils.py computes them: default, linear, dynamic (NTK), llama3, yarn and longrope.
//
//   ASSIGN_OR_RETURN(RopeParameters rope, ParseRopeParameters(reader, /*default_theta=*/10000.0));
//   RopeFrequencies frequencies = ComputeRopeFrequencies(rope, head_dim, max_position_embeddings);
//   // frequencies.inv_freq: float32 [dim / 2]; frequencies.attention_scaling multiplies cos and sin
//
// The arithmetic is done with the same float32 tensor ops in the same order as the Python, so
// cos/sin match transformers' bit for bit on CPU (see rope_test in tests/models).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "models/config.h"

namespace flotilla::models {

// `rope_parameters` (transformers v5) or the legacy `rope_theta` + `rope_scaling` pair,
// standardised as PretrainedConfig.standardize_rope_params does.
struct RopeParameters {
  std::string rope_type = "default";
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  std::optional<double> factor;
  std::optional<double> attention_factor;
  std::optional<double> beta_fast;
  std::optional<double> beta_slow;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> low_freq_factor;
  std::optional<double> high_freq_factor;
  std::optional<int64_t> original_max_position_embeddings;
  bool truncate = true;
  // longrope: per-frequency divisors for sequences up to / beyond original_max_position_embeddings.
  std::vector<double> short_factor;
  std::vector<double> long_factor;
  nlohmann::json ToJson() const;
};

// Consumes rope_parameters / rope_scaling / rope_theta / partial_rotary_factor from `reader`.
// Errors (unknown rope_type, missing factor) are recorded in the reader.
RopeParameters ParseRopeParameters(ConfigReader& reader, double default_theta, int64_t max_position_embeddings);

struct RopeFrequencies {
  at::Tensor inv_freq;  // float32 [rotary_dim / 2]
  double attention_scaling = 1.0;
};

// `seq_len` is only used by the dynamic type: the longest position seen plus one.
RopeFrequencies ComputeRopeFrequencies(const RopeParameters& parameters, int64_t head_dim,
                                       int64_t max_position_embeddings, std::optional<int64_t> seq_len = std::nullopt);

// The dynamic type's update rule (and longrope's: long factors once positions pass
// original_max_position_embeddings, short factors again below it) (transformers' dynamic_rope_update): recompute when positions grow
// past the cached length, return to the original frequencies when they shrink back.
struct DynamicRopeState {
  int64_t max_seq_len_cached = 0;
  int64_t original_max_seq_len = 0;
  RopeFrequencies original;
};
void DynamicRopeUpdate(const RopeParameters& parameters, int64_t head_dim, int64_t max_position_embeddings,
                       const at::Tensor& position_ids, DynamicRopeState& state, RopeFrequencies& current);

}  // namespace flotilla::models
