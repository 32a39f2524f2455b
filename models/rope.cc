#include "models/rope.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace flotilla::models {
namespace {

// base ** (arange(0, dim, 2) / dim), in float32 as torch computes it.
at::Tensor BasePowers(double base, int64_t dim) {
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(base, exponents);
}

std::optional<double> Number(const nlohmann::json& object, const char* key) {
  if (!object.contains(key) || object[key].is_null() || !object[key].is_number()) return std::nullopt;
  return object[key].get<double>();
}

}  // namespace

nlohmann::json RopeParameters::ToJson() const {
  nlohmann::json json = {{"rope_type", rope_type}, {"rope_theta", rope_theta}};
  if (partial_rotary_factor != 1.0) json["partial_rotary_factor"] = partial_rotary_factor;
  auto put = [&](const char* key, const auto& value) {
    if (value) json[key] = *value;
  };
  put("factor", factor);
  put("attention_factor", attention_factor);
  put("beta_fast", beta_fast);
  put("beta_slow", beta_slow);
  put("mscale", mscale);
  put("mscale_all_dim", mscale_all_dim);
  put("low_freq_factor", low_freq_factor);
  put("high_freq_factor", high_freq_factor);
  put("original_max_position_embeddings", original_max_position_embeddings);
  if (rope_type == "yarn") json["truncate"] = truncate;
  if (rope_type == "longrope") {
    json["short_factor"] = short_factor;
    json["long_factor"] = long_factor;
  }
  return json;
}

RopeParameters ParseRopeParameters(ConfigReader& reader, double default_theta, int64_t max_position_embeddings) {
  RopeParameters parameters;
  nlohmann::json dictionary = reader.Raw("rope_parameters");
  nlohmann::json legacy = reader.Raw("rope_scaling");
  if (dictionary.is_null() || dictionary.empty()) dictionary = legacy;
  if (dictionary.is_null()) dictionary = nlohmann::json::object();
  if (!dictionary.is_object()) {
    reader.Fail(absl::StrCat("key rope_parameters: expected an object but got ", dictionary.dump()));
    return parameters;
  }
  const double top_level_theta = reader.Double("rope_theta", default_theta);
  const std::optional<double> top_level_partial = reader.OptionalDouble("partial_rotary_factor");
  parameters.rope_type = dictionary.value("rope_type", dictionary.value("type", std::string("default")));
  parameters.rope_theta = Number(dictionary, "rope_theta").value_or(top_level_theta);
  parameters.partial_rotary_factor =
      Number(dictionary, "partial_rotary_factor").value_or(top_level_partial.value_or(1.0));
  parameters.factor = Number(dictionary, "factor");
  parameters.attention_factor = Number(dictionary, "attention_factor");
  parameters.beta_fast = Number(dictionary, "beta_fast");
  parameters.beta_slow = Number(dictionary, "beta_slow");
  parameters.mscale = Number(dictionary, "mscale");
  parameters.mscale_all_dim = Number(dictionary, "mscale_all_dim");
  parameters.low_freq_factor = Number(dictionary, "low_freq_factor");
  parameters.high_freq_factor = Number(dictionary, "high_freq_factor");
  if (auto original = Number(dictionary, "original_max_position_embeddings")) {
    parameters.original_max_position_embeddings = static_cast<int64_t>(*original);
  }
  if (dictionary.contains("truncate") && dictionary["truncate"].is_boolean()) {
    parameters.truncate = dictionary["truncate"].get<bool>();
  }
  auto factors = [&](const char* key) {
    std::vector<double> values;
    if (dictionary.contains(key) && dictionary[key].is_array()) {
      for (const auto& value : dictionary[key]) values.push_back(value.is_number() ? value.get<double>() : 0.0);
    }
    return values;
  };
  parameters.short_factor = factors("short_factor");
  parameters.long_factor = factors("long_factor");
  const std::string& type = parameters.rope_type;
  if (type == "llama3" || type == "yarn" || type == "longrope") {
    if (auto original = reader.OptionalInt("original_max_position_embeddings")) {
      parameters.original_max_position_embeddings = *original;
    } else if (!parameters.original_max_position_embeddings) {
      parameters.original_max_position_embeddings = max_position_embeddings;
    }
  }
  if (type != "default" && type != "linear" && type != "dynamic" && type != "llama3" && type != "yarn" &&
      type != "longrope") {
    reader.Fail(absl::StrCat("key rope_parameters.rope_type: expected one of default, linear, dynamic, llama3, yarn, longrope",
                             " but got \"", type, "\""));
  } else if ((type == "linear" || type == "dynamic" || type == "llama3") && !parameters.factor) {
    reader.Fail(absl::StrCat("key rope_parameters.factor: required for rope_type ", type));
  } else if (type == "llama3" && (!parameters.low_freq_factor || !parameters.high_freq_factor)) {
    reader.Fail("key rope_parameters: rope_type llama3 needs low_freq_factor and high_freq_factor");
  } else if (type == "longrope" && (parameters.short_factor.empty() || parameters.long_factor.empty())) {
    reader.Fail("key rope_parameters: rope_type longrope needs short_factor and long_factor (lists of numbers)");
  }
  return parameters;
}

RopeFrequencies ComputeRopeFrequencies(const RopeParameters& parameters, int64_t head_dim,
                                       int64_t max_position_embeddings, std::optional<int64_t> seq_len) {
  const int64_t dim = static_cast<int64_t>(static_cast<double>(head_dim) * parameters.partial_rotary_factor);
  double base = parameters.rope_theta;
  RopeFrequencies result;
  const std::string& type = parameters.rope_type;
  if (type == "default") {
    result.inv_freq = 1.0 / BasePowers(base, dim);
  } else if (type == "linear") {
    result.inv_freq = (1.0 / BasePowers(base, dim)) / *parameters.factor;
  } else if (type == "dynamic") {
    const double factor = *parameters.factor;
    const double exponent = static_cast<double>(dim) / static_cast<double>(dim - 2);
    if (!seq_len.has_value()) {
      // At init transformers computes the base with Python floats (double).
      base = base * std::pow((factor * max_position_embeddings / max_position_embeddings) - (factor - 1), exponent);
      result.inv_freq = 1.0 / BasePowers(base, dim);
    } else {
      // During the dynamic update seq_len is a tensor, so transformers computes the base in float32.
      at::Tensor length = at::tensor({std::max(*seq_len, max_position_embeddings)}, at::kLong);
      at::Tensor scaled_base = base * ((factor * length / static_cast<double>(max_position_embeddings)) - (factor - 1)).pow(exponent);
      at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
      result.inv_freq = 1.0 / at::pow(scaled_base, exponents);
    }
  } else if (type == "llama3") {
    at::Tensor inv_freq = 1.0 / BasePowers(base, dim);
    const double factor = *parameters.factor;
    const double low_freq_factor = *parameters.low_freq_factor;
    const double high_freq_factor = *parameters.high_freq_factor;
    const double old_context_len = static_cast<double>(*parameters.original_max_position_embeddings);
    const double low_freq_wavelen = old_context_len / low_freq_factor;
    const double high_freq_wavelen = old_context_len / high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor inv_freq_llama = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
    at::Tensor smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
    at::Tensor smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama;
    at::Tensor is_medium_freq = (wavelen < high_freq_wavelen).logical_not() * (wavelen > low_freq_wavelen).logical_not();
    result.inv_freq = at::where(is_medium_freq, smoothed_inv_freq, inv_freq_llama);
  } else if (type == "yarn") {
    const double original = static_cast<double>(*parameters.original_max_position_embeddings);
    const double factor = parameters.factor.value_or(max_position_embeddings / original);
    auto get_mscale = [](double scale, double mscale) {
      return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
    };
    if (parameters.attention_factor) {
      result.attention_scaling = *parameters.attention_factor;
    } else if (parameters.mscale.value_or(0) != 0 && parameters.mscale_all_dim.value_or(0) != 0) {
      result.attention_scaling = get_mscale(factor, *parameters.mscale) / get_mscale(factor, *parameters.mscale_all_dim);
    } else {
      result.attention_scaling = get_mscale(factor, 1.0);
    }
    const double beta_fast = parameters.beta_fast.value_or(0) != 0 ? *parameters.beta_fast : 32;
    const double beta_slow = parameters.beta_slow.value_or(0) != 0 ? *parameters.beta_slow : 1;
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(base));
    };
    double low = correction_dim(beta_fast);
    double high = correction_dim(beta_slow);
    if (parameters.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;  // as transformers: prevent a division by zero
    at::Tensor ramp = at::clamp((at::arange(dim / 2, at::kFloat) - low) / (high - low), 0, 1);
    at::Tensor pos_freqs = BasePowers(base, dim);
    at::Tensor inv_freq_extrapolation = 1.0 / pos_freqs;
    at::Tensor inv_freq_interpolation = 1.0 / (factor * pos_freqs);
    at::Tensor extrapolation_factor = 1 - ramp;
    result.inv_freq = inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor;
  } else if (type == "longrope") {
    const double original = static_cast<double>(*parameters.original_max_position_embeddings);
    // Phi3 stores a longer max_position_embeddings beside the pretraining length; their ratio is the
    // default factor.
    const double factor = parameters.factor.value_or(max_position_embeddings / original);
    if (parameters.attention_factor) {
      result.attention_scaling = *parameters.attention_factor;
    } else {
      result.attention_scaling = factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(original));
    }
    const bool long_sequence = seq_len.has_value() && *seq_len > *parameters.original_max_position_embeddings;
    const std::vector<double>& chosen = long_sequence ? parameters.long_factor : parameters.short_factor;
    TORCH_CHECK(static_cast<int64_t>(chosen.size()) == dim / 2, "ComputeRopeFrequencies: longrope ",
                long_sequence ? "long_factor" : "short_factor", " must have rotary_dim / 2 = ", dim / 2,
                " entries, got ", chosen.size());
    at::Tensor ext_factors = at::tensor(chosen, at::kDouble).to(at::kFloat);
    result.inv_freq = 1.0 / (ext_factors * BasePowers(base, dim));
  } else {
    TORCH_CHECK(false, "ComputeRopeFrequencies: unknown rope_type ", type);
  }
  return result;
}

void DynamicRopeUpdate(const RopeParameters& parameters, int64_t head_dim, int64_t max_position_embeddings,
                       const at::Tensor& position_ids, DynamicRopeState& state, RopeFrequencies& current) {
  if (parameters.rope_type == "longrope") {
    // transformers' longrope_frequency_update: long factors while the longest position is past the
    // pretraining length, the original (short) ones otherwise.
    const int64_t seq_len = position_ids.max().item<int64_t>() + 1;
    const bool long_sequence = seq_len > *parameters.original_max_position_embeddings;
    current = long_sequence ? ComputeRopeFrequencies(parameters, head_dim, max_position_embeddings,
                                                     *parameters.original_max_position_embeddings + 1)
                            : state.original;
    return;
  }
  if (parameters.rope_type != "dynamic") return;
  const int64_t seq_len = position_ids.max().item<int64_t>() + 1;
  if (seq_len > state.max_seq_len_cached) {
    current = ComputeRopeFrequencies(parameters, head_dim, max_position_embeddings, seq_len);
    state.max_seq_len_cached = seq_len;
  }
  if (seq_len < state.original_max_seq_len && state.max_seq_len_cached > state.original_max_seq_len) {
    current = state.original;
    state.max_seq_len_cached = state.original_max_seq_len;
  }
}

}  // namespace flotilla::models
