#include "services/preprocess/tokenizer/tokenizer_settings.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace flotilla::tokenizer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The file's object, null when the file does not exist.
absl::StatusOr<json> ReadOptionalJson(const fs::path& path) {
  std::error_code error;
  if (!fs::exists(path, error)) return json(nullptr);
  std::ifstream stream(path, std::ios::binary);
  if (!stream) return absl::NotFoundError(absl::StrCat("LoadTokenizerSettings: cannot open ", path.string()));
  const std::string text((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoadTokenizerSettings(", path.string(), "): expected a JSON object, but the file is not one"));
  }
  return parsed;
}

// A special token's content: a string, or an AddedToken object {"content": ..., ...}.
std::optional<std::string> TokenContent(const json& file, const char* key) {
  if (!file.is_object()) return std::nullopt;
  auto found = file.find(key);
  if (found == file.end()) return std::nullopt;
  if (found->is_string()) return found->get<std::string>();
  if (found->is_object()) {
    auto content = found->find("content");
    if (content != found->end() && content->is_string()) return content->get<std::string>();
  }
  return std::nullopt;
}

std::optional<int64_t> Integer(const json& file, const char* key) {
  if (!file.is_object()) return std::nullopt;
  auto found = file.find(key);
  if (found == file.end() || !found->is_number_integer()) return std::nullopt;
  return found->get<int64_t>();
}

std::optional<double> Number(const json& file, const char* key) {
  if (!file.is_object()) return std::nullopt;
  auto found = file.find(key);
  if (found == file.end() || !found->is_number()) return std::nullopt;
  return found->get<double>();
}

std::optional<bool> Bool(const json& file, const char* key) {
  if (!file.is_object()) return std::nullopt;
  auto found = file.find(key);
  if (found == file.end() || !found->is_boolean()) return std::nullopt;
  return found->get<bool>();
}

// eos_token_id: an int or a list of ints.
std::vector<int64_t> IntegerList(const json& file, const char* key) {
  std::vector<int64_t> values;
  if (!file.is_object()) return values;
  auto found = file.find(key);
  if (found == file.end()) return values;
  if (found->is_number_integer()) values.push_back(found->get<int64_t>());
  if (found->is_array()) {
    for (const json& element : *found) {
      if (element.is_number_integer()) values.push_back(element.get<int64_t>());
    }
  }
  return values;
}

std::optional<SpecialToken> ResolveToken(const Tokenizer& tokenizer, const json& special_tokens_map,
                                         const json& tokenizer_config, const json& config, const char* name) {
  SpecialToken token;
  if (std::optional<std::string> content = TokenContent(special_tokens_map, name)) {
    token.content = *content;
    token.source = "special_tokens_map.json";
  } else if (std::optional<std::string> config_content = TokenContent(tokenizer_config, name)) {
    token.content = *config_content;
    token.source = "tokenizer_config.json";
  }
  if (!token.source.empty()) {
    token.id = tokenizer.TokenToId(token.content);
    return token;
  }
  const std::string id_key = absl::StrCat(name, "_id");
  std::optional<int64_t> id = Integer(config, id_key.c_str());
  if (!id.has_value() && config.is_object()) {
    // Composite models (llava, CLIP) keep the text model's ids under text_config.
    if (auto text_config = config.find("text_config"); text_config != config.end()) {
      id = Integer(*text_config, id_key.c_str());
    }
  }
  if (!id.has_value() || *id < 0) return std::nullopt;
  token.id = static_cast<uint32_t>(*id);
  token.content = tokenizer.IdToToken(*token.id).value_or("");
  token.source = "config.json";
  return token;
}

}  // namespace

absl::StatusOr<TokenizerSettings> LoadTokenizerSettings(const std::string& directory, const Tokenizer& tokenizer) {
  const fs::path folder(directory);
  absl::StatusOr<json> special_tokens_map = ReadOptionalJson(folder / "special_tokens_map.json");
  if (!special_tokens_map.ok()) return special_tokens_map.status();
  absl::StatusOr<json> tokenizer_config = ReadOptionalJson(folder / "tokenizer_config.json");
  if (!tokenizer_config.ok()) return tokenizer_config.status();
  absl::StatusOr<json> config = ReadOptionalJson(folder / "config.json");
  if (!config.ok()) return config.status();

  TokenizerSettings settings;
  settings.bos_token = ResolveToken(tokenizer, *special_tokens_map, *tokenizer_config, *config, "bos_token");
  settings.eos_token = ResolveToken(tokenizer, *special_tokens_map, *tokenizer_config, *config, "eos_token");
  settings.pad_token = ResolveToken(tokenizer, *special_tokens_map, *tokenizer_config, *config, "pad_token");
  settings.unk_token = ResolveToken(tokenizer, *special_tokens_map, *tokenizer_config, *config, "unk_token");

  if (tokenizer_config->is_object()) {
    const json& file = *tokenizer_config;
    if (auto side = file.find("padding_side"); side != file.end() && side->is_string()) {
      const std::string& value = side->get_ref<const std::string&>();
      if (value != "left" && value != "right") {
        return absl::InvalidArgumentError(absl::StrCat("LoadTokenizerSettings(", directory,
                                                       "/tokenizer_config.json): padding_side: expected \"left\" or "
                                                       "\"right\" but got \"",
                                                       value, "\""));
      }
      settings.pad_left = value == "left";
    }
    // transformers writes int(1e30) (VERY_LARGE_INTEGER) when there is no limit; it parses as a
    // float or an unsigned overflow here, and means "none".
    std::optional<int64_t> max_length = Integer(file, "model_max_length");
    if (max_length.has_value() && *max_length > 0 && *max_length < (int64_t{1} << 40)) {
      settings.model_max_length = max_length;
    }
    settings.add_bos_token = Bool(file, "add_bos_token");
    settings.add_eos_token = Bool(file, "add_eos_token");
    if (auto chat_template = file.find("chat_template"); chat_template != file.end() && !chat_template->is_null()) {
      settings.has_chat_template = !chat_template->empty();
    }
  }
  std::error_code error;
  if (fs::exists(folder / "chat_template.jinja", error) || fs::exists(folder / "chat_template.json", error)) {
    settings.has_chat_template = true;
  }
  return settings;
}

absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& directory) {
  const fs::path folder(directory);
  absl::StatusOr<json> generation_config = ReadOptionalJson(folder / "generation_config.json");
  if (!generation_config.ok()) return generation_config.status();
  GenerationDefaults defaults;
  if (!generation_config->is_null()) {
    const json& file = *generation_config;
    defaults.source = "generation_config.json";
    defaults.eos_token_ids = IntegerList(file, "eos_token_id");
    defaults.bos_token_id = Integer(file, "bos_token_id");
    defaults.pad_token_id = Integer(file, "pad_token_id");
    defaults.do_sample = Bool(file, "do_sample");
    defaults.temperature = Number(file, "temperature");
    defaults.top_p = Number(file, "top_p");
    defaults.top_k = Integer(file, "top_k");
    defaults.repetition_penalty = Number(file, "repetition_penalty");
    defaults.max_new_tokens = Integer(file, "max_new_tokens");
    defaults.max_length = Integer(file, "max_length");
    return defaults;
  }
  absl::StatusOr<json> config = ReadOptionalJson(folder / "config.json");
  if (!config.ok()) return config.status();
  if (config->is_null()) return defaults;
  // GenerationConfig.from_model_config: the token ids, from text_config for composite models.
  const json* source = &*config;
  if (IntegerList(*source, "eos_token_id").empty() && config->contains("text_config")) {
    source = &(*config)["text_config"];
  }
  defaults.source = "config.json";
  defaults.eos_token_ids = IntegerList(*source, "eos_token_id");
  defaults.bos_token_id = Integer(*source, "bos_token_id");
  defaults.pad_token_id = Integer(*source, "pad_token_id");
  return defaults;
}

}  // namespace flotilla::tokenizer
