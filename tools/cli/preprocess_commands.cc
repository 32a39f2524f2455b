// tokenize, detokenize: the tokenizer library from the command line, on a local directory holding
// a tokenizer.json (registry references come with the registry client).
//
//   flotilla tokenize ./SmolLM2 --text "Hello world" [--pair TEXT] [--no-special-tokens]
//     {"ids": [...], "tokens": [...], "offsets": [[start, end], ...]}   (character offsets, as tokenizers)
//   flotilla detokenize ./SmolLM2 --ids 19556,905 [--skip-special-tokens]
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "services/preprocess/tokenizer/tokenizer.h"
#include "tools/cli/commands.h"

namespace flotilla::cli {
namespace {

std::unique_ptr<tokenizer::Tokenizer> LoadTokenizer(const std::string& source) {
  auto loaded = tokenizer::Tokenizer::FromDirectory(source);
  if (!loaded.ok()) throw CommandFailed(1, std::string(loaded.status().message()));
  return std::move(*loaded);
}

std::vector<uint32_t> ParseIds(const std::string& text) {
  std::vector<uint32_t> ids;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string piece = text.substr(start, end - start);
    try {
      size_t used = 0;
      unsigned long value = std::stoul(piece, &used);
      if (used != piece.size() || value > 0xFFFFFFFFul) throw std::invalid_argument(piece);
      ids.push_back(static_cast<uint32_t>(value));
    } catch (const std::exception&) {
      throw CommandFailed(2, "detokenize: --ids: expected comma-separated non-negative integers but got \"" + piece + "\"");
    }
    start = end + 1;
  }
  return ids;
}

}  // namespace

void AddPreprocessCommands(CLI::App& app) {
  struct TokenizeOptions {
    std::string source, text, pair;
    bool no_special_tokens = false;
  };
  auto tokenize_options = std::make_shared<TokenizeOptions>();
  CLI::App* tokenize = app.add_subcommand("tokenize", "Encode text with a tokenizer.json; prints JSON ids, tokens, offsets.");
  tokenize->add_option("source", tokenize_options->source, "Directory holding tokenizer.json")->required();
  tokenize->add_option("--text", tokenize_options->text, "Text to encode")->required();
  tokenize->add_option("--pair", tokenize_options->pair, "Second sequence of a pair");
  tokenize->add_flag("--no-special-tokens", tokenize_options->no_special_tokens, "Do not add the post-processor's special tokens");
  tokenize->callback([tokenize_options, tokenize] {
    auto tokenizer = LoadTokenizer(tokenize_options->source);
    tokenizer::EncodeOptions options;
    options.add_special_tokens = !tokenize_options->no_special_tokens;
    options.offset_type = tokenizer::OffsetType::kChar;
    auto encoding = tokenize->count("--pair") > 0
                        ? tokenizer->EncodePair(tokenize_options->text, tokenize_options->pair, options)
                        : tokenizer->Encode(tokenize_options->text, options);
    if (!encoding.ok()) throw CommandFailed(1, "tokenize: " + std::string(encoding.status().message()));
    nlohmann::json offsets = nlohmann::json::array();
    for (const auto& offset : encoding->offsets) offsets.push_back({offset.start, offset.end});
    nlohmann::json output{{"ids", encoding->ids}, {"tokens", encoding->tokens}, {"offsets", offsets}};
    std::printf("%s\n", output.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  });

  struct DetokenizeOptions {
    std::string source, ids;
    bool skip_special_tokens = false;
  };
  auto detokenize_options = std::make_shared<DetokenizeOptions>();
  CLI::App* detokenize = app.add_subcommand("detokenize", "Decode token ids with a tokenizer.json; prints the text.");
  detokenize->add_option("source", detokenize_options->source, "Directory holding tokenizer.json")->required();
  detokenize->add_option("--ids", detokenize_options->ids, "Comma-separated token ids")->required();
  detokenize->add_flag("--skip-special-tokens", detokenize_options->skip_special_tokens, "Leave special tokens out");
  detokenize->callback([detokenize_options] {
    auto tokenizer = LoadTokenizer(detokenize_options->source);
    auto text = tokenizer->Decode(ParseIds(detokenize_options->ids), detokenize_options->skip_special_tokens);
    if (!text.ok()) throw CommandFailed(1, "detokenize: " + std::string(text.status().message()));
    std::printf("%s\n", text->c_str());
  });
}

}  // namespace flotilla::cli
