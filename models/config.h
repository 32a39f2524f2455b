// Model configuration: config.json read into typed fields that keep Hugging Face's names.
//
// Each model file declares its own typed config (`LlamaConfig`) deriving from PretrainedConfig and
// fills it with a ConfigReader, which records which keys it consumed so the rest are kept verbatim
// in `unknown_keys` (and written back by ToJson). Defaults are transformers' defaults, written in
// the model file next to the field.
//
//   ConfigReader reader(json, "config.json");
//   LlamaConfig config;
//   reader.Common(config);                       // model_type, architectures, eos_token_id, ...
//   config.hidden_size = reader.Int("hidden_size", 4096);
//   RETURN_IF_ERROR(reader.Finish(config));      // first type error, unknown keys kept
//
// Thread-safety: plain values; a loaded config is read-only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace flotilla::models {

// Fields every transformers PretrainedConfig has.
struct PretrainedConfig {
  virtual ~PretrainedConfig() = default;
  std::string model_type;
  std::vector<std::string> architectures;
  // "eager", "sdpa" or any registered attention function; from `attn_implementation` in
  // config.json or the load options (default "sdpa", as transformers picks when torch has it).
  std::string attn_implementation = "sdpa";
  std::optional<int64_t> pad_token_id;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_id;  // an int or a list in config.json
  bool tie_word_embeddings = false;
  // Classification heads' width: len(id2label) when the config has one, else num_labels, else 2.
  int64_t num_labels = 2;
  std::string dtype;  // `dtype` (or legacy `torch_dtype`) as written, "" when absent
  // A tensor-parallel plan from config.json (`base_model_tp_plan`), overriding the model's default.
  nlohmann::json tp_plan_override;
  nlohmann::json unknown_keys = nlohmann::json::object();
  nlohmann::json source = nlohmann::json::object();  // the whole config.json as read

  // The config.json this config writes: the source with typed fields written back.
  virtual nlohmann::json ToJson() const { return source; }
};

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& json, std::string file_name);

  int64_t Int(const std::string& key, int64_t default_value);
  std::optional<int64_t> OptionalInt(const std::string& key, std::optional<int64_t> default_value = std::nullopt);
  double Double(const std::string& key, double default_value);
  std::optional<double> OptionalDouble(const std::string& key);
  bool Bool(const std::string& key, bool default_value);
  std::string String(const std::string& key, const std::string& default_value);
  std::vector<std::string> Strings(const std::string& key);
  // The raw value (null when absent), marked as consumed.
  nlohmann::json Raw(const std::string& key);
  bool Has(const std::string& key) const;

  // Reads the PretrainedConfig fields.
  void Common(PretrainedConfig& config);
  // Records an error for an inconsistent value (the reader keeps the first error).
  void Fail(const std::string& message);
  // Returns the first error, else stores the unconsumed keys in config.unknown_keys.
  absl::Status Finish(PretrainedConfig& config);

 private:
  template <typename T>
  std::optional<T> Get(const std::string& key, const char* expected_type);

  const nlohmann::json& json_;
  std::string file_name_;
  std::vector<std::string> consumed_;
  absl::Status status_;
};

// Reads a JSON file (config.json, generation_config.json).
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

}  // namespace flotilla::models
