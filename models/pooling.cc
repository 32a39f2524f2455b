#include "models/pooling.h"

#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "models/config.h"

namespace flotilla::models {

absl::StatusOr<SentenceEmbeddingConfig> ReadSentenceEmbeddingConfig(const std::string& folder) {
  SentenceEmbeddingConfig config;
  const std::filesystem::path root(folder);
  if (std::filesystem::exists(root / "sentence_bert_config.json")) {
    auto json = ReadJsonFile((root / "sentence_bert_config.json").string());
    if (!json.ok()) return json.status();
    if (json->contains("max_seq_length") && (*json)["max_seq_length"].is_number_integer()) {
      config.max_seq_length = (*json)["max_seq_length"].get<int64_t>();
    }
  }
  const std::filesystem::path modules_path = root / "modules.json";
  if (!std::filesystem::exists(modules_path)) return config;
  auto modules = ReadJsonFile(modules_path.string());
  if (!modules.ok()) return modules.status();
  if (!modules->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(modules_path.string(), ": expected a list of modules"));
  }
  config.normalize = false;
  for (const auto& module : *modules) {
    const std::string type = module.value("type", "");
    if (type.ends_with(".Normalize")) config.normalize = true;
    if (!type.ends_with(".Pooling")) continue;
    const std::filesystem::path pooling_path = root / module.value("path", "") / "config.json";
    auto pooling = ReadJsonFile(pooling_path.string());
    if (!pooling.ok()) return pooling.status();
    std::vector<std::string> modes;
    if (pooling->value("pooling_mode_mean_tokens", false)) modes.push_back("mean");
    if (pooling->value("pooling_mode_cls_token", false)) modes.push_back("cls");
    if (pooling->value("pooling_mode_max_tokens", false)) modes.push_back("max");
    for (const char* unsupported : {"pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                                    "pooling_mode_lasttoken"}) {
      if (pooling->value(unsupported, false)) {
        return absl::UnimplementedError(absl::StrCat(pooling_path.string(), ": ", unsupported, " is not supported"));
      }
    }
    if (modes.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(pooling_path.string(),
                                                     ": expected exactly one of pooling_mode_mean_tokens, "
                                                     "pooling_mode_cls_token, pooling_mode_max_tokens; got ",
                                                     modes.size()));
    }
    config.pooling_mode = modes[0];
  }
  return config;
}

namespace {

at::ScalarType AccumulationType(const at::Tensor& tensor) {
  const auto dtype = tensor.scalar_type();
  return dtype == at::kHalf || dtype == at::kBFloat16 ? at::kFloat : dtype;
}

}  // namespace

at::Tensor MeanPooling(const at::Tensor& token_embeddings, const at::Tensor& attention_mask) {
  at::Tensor mask = attention_mask.unsqueeze(-1).to(token_embeddings.scalar_type());
  const at::ScalarType accumulation = AccumulationType(token_embeddings);
  at::Tensor sum = (token_embeddings * mask).sum(1, /*keepdim=*/false, accumulation);
  at::Tensor count = mask.sum(1, /*keepdim=*/false, accumulation).clamp_min(1e-9);
  return (sum / count).to(token_embeddings.scalar_type());
}

at::Tensor ClsPooling(const at::Tensor& token_embeddings, const at::Tensor& attention_mask) {
  // The first non-padding token (padding may be on the left).
  at::Tensor first = attention_mask.to(at::kInt).argmax(1);
  at::Tensor index = first.view({-1, 1, 1}).expand({-1, 1, token_embeddings.size(-1)});
  return token_embeddings.gather(1, index).squeeze(1);
}

at::Tensor MaxPooling(const at::Tensor& token_embeddings, const at::Tensor& attention_mask) {
  at::Tensor padding = attention_mask.unsqueeze(-1).expand_as(token_embeddings).eq(0);
  return std::get<0>(token_embeddings.masked_fill(padding, -std::numeric_limits<double>::infinity()).max(1));
}

at::Tensor L2Normalize(const at::Tensor& embeddings) {
  at::Tensor norm = embeddings.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);
  return embeddings / norm;
}

at::Tensor SentenceEmbeddings(const at::Tensor& last_hidden_state, const at::Tensor& attention_mask,
                              const SentenceEmbeddingConfig& config) {
  at::Tensor pooled;
  if (config.pooling_mode == "cls") {
    pooled = ClsPooling(last_hidden_state, attention_mask);
  } else if (config.pooling_mode == "max") {
    pooled = MaxPooling(last_hidden_state, attention_mask);
  } else {
    TORCH_CHECK(config.pooling_mode == "mean", "SentenceEmbeddings: unknown pooling mode \"", config.pooling_mode,
                "\" (expected mean, cls or max)");
    pooled = MeanPooling(last_hidden_state, attention_mask);
  }
  return config.normalize ? L2Normalize(pooled) : pooled;
}

}  // namespace flotilla::models
