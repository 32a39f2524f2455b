#include "models/config.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace flotilla::models {

ConfigReader::ConfigReader(const nlohmann::json& json, std::string file_name)
    : json_(json), file_name_(std::move(file_name)) {
  if (!json_.is_object()) Fail(absl::StrCat("expected a JSON object, got ", json_.type_name()));
}

bool ConfigReader::Has(const std::string& key) const {
  return json_.is_object() && json_.contains(key) && !json_.at(key).is_null();
}

void ConfigReader::Fail(const std::string& message) {
  if (status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat(file_name_, ": ", message));
}

template <typename T>
std::optional<T> ConfigReader::Get(const std::string& key, const char* expected_type) {
  consumed_.push_back(key);
  if (!Has(key)) return std::nullopt;
  const auto& value = json_.at(key);
  bool matches = false;
  if constexpr (std::is_same_v<T, bool>) matches = value.is_boolean();
  else if constexpr (std::is_integral_v<T>) matches = value.is_number_integer();
  else if constexpr (std::is_floating_point_v<T>) matches = value.is_number();
  else matches = value.is_string();
  if (!matches) {
    Fail(absl::StrCat("key ", key, ": expected ", expected_type, " but got ", value.dump()));
    return std::nullopt;
  }
  return value.get<T>();
}

int64_t ConfigReader::Int(const std::string& key, int64_t default_value) {
  return Get<int64_t>(key, "an integer").value_or(default_value);
}
std::optional<int64_t> ConfigReader::OptionalInt(const std::string& key, std::optional<int64_t> default_value) {
  auto value = Get<int64_t>(key, "an integer");
  return Has(key) ? value : default_value;
}
double ConfigReader::Double(const std::string& key, double default_value) {
  return Get<double>(key, "a number").value_or(default_value);
}
std::optional<double> ConfigReader::OptionalDouble(const std::string& key) { return Get<double>(key, "a number"); }
bool ConfigReader::Bool(const std::string& key, bool default_value) {
  return Get<bool>(key, "true or false").value_or(default_value);
}
std::string ConfigReader::String(const std::string& key, const std::string& default_value) {
  return Get<std::string>(key, "a string").value_or(default_value);
}
std::vector<std::string> ConfigReader::Strings(const std::string& key) {
  consumed_.push_back(key);
  std::vector<std::string> values;
  if (!Has(key)) return values;
  const auto& value = json_.at(key);
  if (!value.is_array()) {
    Fail(absl::StrCat("key ", key, ": expected a list of strings but got ", value.dump()));
    return values;
  }
  for (const auto& item : value) {
    if (!item.is_string()) {
      Fail(absl::StrCat("key ", key, ": expected a list of strings but got ", value.dump()));
      return {};
    }
    values.push_back(item.get<std::string>());
  }
  return values;
}
nlohmann::json ConfigReader::Raw(const std::string& key) {
  consumed_.push_back(key);
  return Has(key) ? json_.at(key) : nlohmann::json();
}

void ConfigReader::Common(PretrainedConfig& config) {
  config.source = json_;
  config.model_type = String("model_type", "");
  config.architectures = Strings("architectures");
  config.attn_implementation = String("attn_implementation", String("_attn_implementation", "sdpa"));
  config.pad_token_id = OptionalInt("pad_token_id");
  config.bos_token_id = OptionalInt("bos_token_id");
  config.tie_word_embeddings = Bool("tie_word_embeddings", config.tie_word_embeddings);
  nlohmann::json id2label = Raw("id2label");
  config.num_labels = id2label.is_object() ? static_cast<int64_t>(id2label.size()) : Int("num_labels", 2);
  config.dtype = String("dtype", String("torch_dtype", ""));
  config.tp_plan_override = Raw("base_model_tp_plan");
  nlohmann::json eos = Raw("eos_token_id");
  if (eos.is_number_integer()) {
    config.eos_token_id = {eos.get<int64_t>()};
  } else if (eos.is_array()) {
    for (const auto& id : eos) {
      if (!id.is_number_integer()) {
        Fail(absl::StrCat("key eos_token_id: expected an integer or a list of integers but got ", eos.dump()));
        break;
      }
      config.eos_token_id.push_back(id.get<int64_t>());
    }
  } else if (!eos.is_null()) {
    Fail(absl::StrCat("key eos_token_id: expected an integer or a list of integers but got ", eos.dump()));
  }
}

absl::Status ConfigReader::Finish(PretrainedConfig& config) {
  if (!status_.ok()) return status_;
  config.unknown_keys = nlohmann::json::object();
  for (const auto& [key, value] : json_.items()) {
    if (std::find(consumed_.begin(), consumed_.end(), key) == consumed_.end()) config.unknown_keys[key] = value;
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  std::ifstream stream(path);
  if (!stream) return absl::NotFoundError(absl::StrCat("ReadJsonFile(", path, "): cannot open"));
  nlohmann::json json = nlohmann::json::parse(stream, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::InvalidArgumentError(absl::StrCat("ReadJsonFile(", path, "): not valid JSON"));
  return json;
}

}  // namespace flotilla::models
