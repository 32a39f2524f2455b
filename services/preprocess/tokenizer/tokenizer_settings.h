// What transformers reads beside tokenizer.json when it loads a tokenizer and a generation config:
// the special tokens (bos/eos/pad/unk) resolved to ids, padding_side, model_max_length,
// add_bos_token/add_eos_token, whether there is a chat template (tokenizer_config.json,
// special_tokens_map.json), and the generation defaults (generation_config.json, else config.json).
// One loader, so the CLI, the preprocess service and the gateway agree on a model's pad token,
// its stop ids and its default sampling.
//
//   auto tokenizer = Tokenizer::FromDirectory(folder);
//   auto settings = LoadTokenizerSettings(folder, **tokenizer);
//   if (settings->pad_token && settings->pad_token->id) pad_id = *settings->pad_token->id;
//   auto defaults = LoadGenerationDefaults(folder);   // defaults->eos_token_ids: every stop id
//
// Precedence, as transformers' from_pretrained: special_tokens_map.json overrides
// tokenizer_config.json for the special tokens; a token neither names falls back to config.json's
// `<name>_id` (marked by `source`, since a transformers tokenizer would not have it). Generation
// defaults come from generation_config.json when it exists, else from config.json's token ids
// (GenerationConfig.from_model_config). Missing files are not errors; malformed ones are.
//
// Thread safety: the loaders are thread-safe; the results are plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/preprocess/tokenizer/tokenizer.h"

namespace flotilla::tokenizer {

struct SpecialToken {
  std::string content;         // empty when only an id is known (config.json)
  std::optional<uint32_t> id;  // nullopt: the content is not in tokenizer.json's vocabulary
  std::string source;          // the file it came from: "special_tokens_map.json", ...
};

struct TokenizerSettings {
  std::optional<SpecialToken> bos_token;
  std::optional<SpecialToken> eos_token;
  std::optional<SpecialToken> pad_token;
  std::optional<SpecialToken> unk_token;
  bool pad_left = false;                  // padding_side "left"
  std::optional<int64_t> model_max_length;  // absent, or transformers' "very large" sentinel: nullopt
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  bool has_chat_template = false;  // tokenizer_config.json's chat_template or chat_template.jinja
};

struct GenerationDefaults {
  std::vector<int64_t> eos_token_ids;  // an int or a list in the file
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  std::optional<bool> do_sample;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<double> repetition_penalty;
  std::optional<int64_t> max_new_tokens;
  std::optional<int64_t> max_length;
  std::string source;  // "generation_config.json", "config.json", or empty when neither exists
};

absl::StatusOr<TokenizerSettings> LoadTokenizerSettings(const std::string& directory, const Tokenizer& tokenizer);
absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& directory);

}  // namespace flotilla::tokenizer
