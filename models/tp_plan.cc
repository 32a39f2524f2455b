#include "models/tp_plan.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace flotilla::models {
namespace {

constexpr std::pair<const char*, ParallelStyle> kStyles[] = {
    {"colwise", ParallelStyle::kColwise},
    {"rowwise", ParallelStyle::kRowwise},
    {"rowwise_split_input", ParallelStyle::kRowwiseSplitInput},
    {"packed_colwise", ParallelStyle::kPackedColwise},
    {"packed_rowwise", ParallelStyle::kPackedRowwise},
    {"colwise_gather_output", ParallelStyle::kColwiseGatherOutput},
    // transformers' name for the lm_head's style (a colwise split whose output is replicated again).
    {"colwise_rep", ParallelStyle::kColwiseGatherOutput},
    {"vocab_parallel", ParallelStyle::kVocabParallel},
    {"embedding_rowwise", ParallelStyle::kVocabParallel},
    {"replicated", ParallelStyle::kReplicated},
    // Gemma 3 / Qwen 3's q_norm and k_norm: replicated; the gradient all-reduce is for training only.
    {"replicated_with_grad_allreduce", ParallelStyle::kReplicated},
    {"conv1d_colwise", ParallelStyle::kConv1DColwise},
    {"conv1d_rowwise", ParallelStyle::kConv1DRowwise},
    {"conv1d_packed_colwise", ParallelStyle::kConv1DPackedColwise},
};

}  // namespace

absl::StatusOr<ParallelStyle> ParseParallelStyle(std::string_view name) {
  for (const auto& [text, style] : kStyles) {
    if (name == text) return style;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown tensor-parallel style \"", std::string(name),
      "\" (known: colwise, rowwise, rowwise_split_input, packed_colwise, packed_rowwise, colwise_gather_output, vocab_parallel, replicated, "
      "conv1d_colwise, conv1d_rowwise, conv1d_packed_colwise)"));
}

std::string ParallelStyleName(ParallelStyle style) {
  for (const auto& [text, known] : kStyles) {
    if (known == style) return text;
  }
  return "?";
}

int64_t PackedParts(ParallelStyle style) {
  switch (style) {
    case ParallelStyle::kPackedColwise:
    case ParallelStyle::kPackedRowwise:
      return 2;
    case ParallelStyle::kConv1DPackedColwise:
      return 3;
    default:
      return 1;
  }
}

absl::StatusOr<TensorParallelPlan> TensorParallelPlan::FromJson(const nlohmann::json& json) {
  TensorParallelPlan plan;
  if (json.is_null()) return plan;
  if (!json.is_object()) return absl::InvalidArgumentError("tensor-parallel plan must be an object of pattern: style");
  for (const auto& [pattern, style] : json.items()) {
    if (!style.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor-parallel plan entry ", pattern, " must be a string"));
    }
    auto parsed = ParseParallelStyle(style.get<std::string>());
    if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat("tensor-parallel plan entry ", pattern, ": ",
                                                                     parsed.status().message()));
    plan.Add(pattern, *parsed);
  }
  return plan;
}

nlohmann::json TensorParallelPlan::ToJson() const {
  nlohmann::json json = nlohmann::json::object();
  for (const auto& [pattern, style] : entries_) json[pattern] = ParallelStyleName(style);
  return json;
}

bool GlobMatchesModuleName(std::string_view pattern, std::string_view module_name) {
  std::vector<absl::string_view> pattern_parts = absl::StrSplit(absl::string_view(pattern.data(), pattern.size()), '.');
  std::vector<absl::string_view> name_parts = absl::StrSplit(absl::string_view(module_name.data(), module_name.size()), '.');
  if (pattern_parts.size() != name_parts.size()) return false;
  for (size_t i = 0; i < pattern_parts.size(); ++i) {
    if (pattern_parts[i] != "*" && pattern_parts[i] != name_parts[i]) return false;
  }
  return true;
}

std::optional<ParallelStyle> TensorParallelPlan::Match(std::string_view module_name) const {
  for (const auto& [pattern, style] : entries_) {
    if (GlobMatchesModuleName(pattern, module_name)) return style;
  }
  return std::nullopt;
}

absl::StatusOr<at::Tensor> ShardParameter(const at::Tensor& full, std::string_view parameter_name,
                                          ParallelStyle style, int64_t rank, int64_t world_size,
                                          int64_t packed_parts) {
  const bool is_bias = parameter_name.size() >= 4 && parameter_name.substr(parameter_name.size() - 4) == "bias";
  int64_t dim = -1;
  bool packed = false;
  switch (style) {
    case ParallelStyle::kReplicated:
      return full;
    case ParallelStyle::kColwise:
    case ParallelStyle::kColwiseGatherOutput:
    case ParallelStyle::kVocabParallel:
      dim = 0;
      break;
    case ParallelStyle::kPackedColwise:
      dim = 0;
      packed = true;
      break;
    case ParallelStyle::kRowwise:
    case ParallelStyle::kRowwiseSplitInput:
      if (is_bias) return full;  // added once, after the reduction
      dim = 1;
      break;
    case ParallelStyle::kPackedRowwise:
      if (is_bias) return full;
      dim = 1;
      packed = true;
      break;
    // Conv1D weights are [in, out]: the output dimension is 1 (the bias, [out], stays dim 0).
    case ParallelStyle::kConv1DColwise:
      dim = is_bias ? 0 : 1;
      break;
    case ParallelStyle::kConv1DPackedColwise:
      dim = is_bias ? 0 : 1;
      packed = true;
      break;
    case ParallelStyle::kConv1DRowwise:
      if (is_bias) return full;
      dim = 0;
      break;
  }
  if (dim >= full.dim()) {
    return absl::InvalidArgumentError(absl::StrCat("ShardParameter(", std::string(parameter_name), "): ", ParallelStyleName(style),
                                                   " splits dimension ", dim, " but the tensor has shape [",
                                                   absl::StrJoin(full.sizes(), ", "), "]"));
  }
  const int64_t parts = packed ? (packed_parts > 0 ? packed_parts : PackedParts(style)) : 1;
  const int64_t size = full.size(dim);
  if (size % (parts * world_size) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ShardParameter(", std::string(parameter_name), "): dimension ", dim, " of size ",
                                                   size, " does not divide into ",
                                                   parts > 1 ? absl::StrCat(parts, " parts x ", world_size) : absl::StrCat(world_size),
                                                   " shards (tensor-parallel size ", world_size, ")"));
  }
  const int64_t part_size = size / parts;
  const int64_t shard_size = part_size / world_size;
  std::vector<at::Tensor> pieces;
  for (int64_t part = 0; part < parts; ++part) {
    pieces.push_back(full.narrow(dim, part * part_size + rank * shard_size, shard_size));
  }
  // Only this rank's bytes are read from the mapping.
  return pieces.size() == 1 ? pieces[0].contiguous() : at::cat(pieces, dim);
}

absl::StatusOr<std::map<std::string, at::Tensor>> LoadShardedStateDict(const SafetensorsCheckpoint& checkpoint,
                                                                       const TensorParallelPlan& plan,
                                                                       const TensorParallelPlan& top_level_plan,
                                                                       std::string_view base_prefix, int64_t rank,
                                                                       int64_t world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("LoadShardedStateDict: rank ", rank, " of world size ", world_size));
  }
  std::map<std::string, at::Tensor> shards;
  for (const std::string& name : checkpoint.TensorNames()) {
    auto full = checkpoint.Get(name);
    if (!full.ok()) return full.status();
    std::string_view module_name = name;
    for (std::string_view suffix : {".weight", ".bias"}) {
      if (module_name.size() > suffix.size() && module_name.substr(module_name.size() - suffix.size()) == suffix) {
        module_name.remove_suffix(suffix.size());
        break;
      }
    }
    std::optional<ParallelStyle> style;
    if (!base_prefix.empty() && module_name.substr(0, base_prefix.size()) == base_prefix) {
      style = plan.Match(module_name.substr(base_prefix.size()));
    } else {
      style = top_level_plan.Match(module_name);
    }
    if (!style) {
      shards[name] = *full;
      continue;
    }
    auto shard = ShardParameter(*full, name, *style, rank, world_size);
    if (!shard.ok()) return shard.status();
    shards[name] = *std::move(shard);
  }
  return shards;
}

}  // namespace flotilla::models
