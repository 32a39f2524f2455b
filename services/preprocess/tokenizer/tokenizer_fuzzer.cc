// libFuzzer target: random bytes through every tokenizer pipeline (as text to encode, as a pair, as
// ids to decode and stream) and through the tokenizer.json loader. Nothing may crash, hang or
// leak; invalid UTF-8 must come back as INVALID_ARGUMENT. Built with clang (see CMakeLists.txt) and
// run for a bounded time by ctest. Extra tokenizer directories (e.g. the Python fixtures) can be
// listed, separated by ':', in FLOTILLA_TOKENIZER_FUZZ_DIRS.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "services/preprocess/tokenizer/components.h"
#include "services/preprocess/tokenizer/tokenizer.h"
#include "services/preprocess/tokenizer/unicode.h"

namespace {

using flotilla::tokenizer::Tokenizer;
using Json = nlohmann::json;

Json ByteLevelBpe() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[flotilla::tokenizer::ByteLevelCharacter(static_cast<uint8_t>(b))] = b;
  std::vector<std::pair<std::string, std::string>> merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"},
                                                            {"Ġ", "t"}, {"Ġt", "h"}, {"Ġth", "e"}};
  Json merge_list = Json::array();
  int next = 256;
  for (const auto& [left, right] : merges) {
    vocab[left + right] = next++;
    merge_list.push_back(left + " " + right);
  }
  return Json{
      {"added_tokens", Json::array({Json{{"id", 300}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}},
                                    Json{{"id", 301}, {"content", "<mask>"}, {"lstrip", true}, {"rstrip", true}},
                                    Json{{"id", 302}, {"content", "word"}, {"single_word", true}}})},
      {"normalizer", Json{{"type", "NFKC"}}},
      {"pre_tokenizer", Json{{"type", "Sequence"}, {"pretokenizers", Json::array({
          Json{{"type", "Split"}, {"pattern", Json{{"Regex", R"((?i:'s|'t)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}}, {"behavior", "Isolated"}, {"invert", false}},
          Json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", false}}})}}},
      {"post_processor", Json{{"type", "TemplateProcessing"},
                              {"single", Json::array({Json{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}}, Json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                              {"pair", Json::array({Json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, Json{{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
                              {"special_tokens", {{"<|endoftext|>", {{"id", "<|endoftext|>"}, {"ids", {300}}, {"tokens", {"<|endoftext|>"}}}}}}}},
      {"decoder", Json{{"type", "ByteLevel"}}},
      {"truncation", Json{{"max_length", 64}, {"strategy", "LongestFirst"}, {"direction", "Left"}}},
      {"model", Json{{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}, {"ignore_merges", true}}}};
}

Json MetaspaceBpe() {
  Json vocab = Json{{"<unk>", 0}, {"▁", 1}, {"a", 2}, {"b", 3}, {"▁a", 4}, {"ab", 5}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 6 + b;
  }
  return Json{
      {"normalizer", Json{{"type", "Sequence"}, {"normalizers", Json::array({Json{{"type", "Lowercase"}}, Json{{"type", "NFD"}}, Json{{"type", "StripAccents"}}, Json{{"type", "Strip"}}})}}},
      {"pre_tokenizer", Json{{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", true}}},
      {"decoder", Json{{"type", "Sequence"}, {"decoders", Json::array({Json{{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}},
                                                                         Json{{"type", "ByteFallback"}}, Json{{"type", "Fuse"}},
                                                                         Json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"padding", Json{{"strategy", Json{{"Fixed", 16}}}, {"pad_id", 0}, {"pad_token", "<unk>"}}},
      {"model", Json{{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array({"a b", "▁ a"})}, {"unk_token", "<unk>"},
                     {"byte_fallback", true}, {"fuse_unk", true}}}};
}

Json BertWordPiece() {
  return Json{
      {"normalizer", Json{{"type", "BertNormalizer"}, {"lowercase", true}}},
      {"pre_tokenizer", Json{{"type", "BertPreTokenizer"}}},
      {"post_processor", Json{{"type", "BertProcessing"}, {"sep", {"[SEP]", 2}}, {"cls", {"[CLS]", 1}}}},
      {"decoder", Json{{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
      {"model", Json{{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"max_input_chars_per_word", 20},
                     {"vocab", {{"[UNK]", 0}, {"[CLS]", 1}, {"[SEP]", 2}, {"a", 3}, {"##b", 4}, {"中", 5}}}}}};
}

Json UnigramMetaspace() {
  return Json{
      {"normalizer", Json{{"type", "Sequence"}, {"normalizers", Json::array({Json{{"type", "NFKC"}}, Json{{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", " "}}})}}},
      {"pre_tokenizer", Json{{"type", "Sequence"}, {"pretokenizers", Json::array({Json{{"type", "Whitespace"}}, Json{{"type", "Digits"}, {"individual_digits", true}}, Json{{"type", "Punctuation"}}, Json{{"type", "Metaspace"}, {"prepend_scheme", "always"}}})}}},
      {"post_processor", Json{{"type", "RobertaProcessing"}, {"sep", {"</s>", 2}}, {"cls", {"<s>", 1}}}},
      {"decoder", Json{{"type", "Metaspace"}}},
      {"model", Json{{"type", "Unigram"}, {"unk_id", 0}, {"byte_fallback", false},
                     {"vocab", Json::array({Json::array({"<unk>", 0.0}), Json::array({"<s>", 0.0}), Json::array({"</s>", 0.0}),
                                            Json::array({"▁", -1.0}), Json::array({"a", -2.0}), Json::array({"▁a", -1.5}),
                                            Json::array({"ab", -2.5}), Json::array({"b", -3.0})})}}}};
}

std::vector<std::unique_ptr<Tokenizer>>& Tokenizers() {
  static auto* tokenizers = [] {
    auto* list = new std::vector<std::unique_ptr<Tokenizer>>();
    for (const Json& json : {ByteLevelBpe(), MetaspaceBpe(), BertWordPiece(), UnigramMetaspace()}) {
      auto tokenizer = Tokenizer::FromJson(json.dump(), "fuzzer");
      if (!tokenizer.ok()) {
        std::fprintf(stderr, "fuzzer tokenizer failed to load: %s\n", std::string(tokenizer.status().message()).c_str());
        std::abort();
      }
      list->push_back(std::move(*tokenizer));
    }
    if (const char* directories = std::getenv("FLOTILLA_TOKENIZER_FUZZ_DIRS")) {
      std::string all = directories;
      size_t start = 0;
      while (start <= all.size()) {
        size_t end = all.find(':', start);
        if (end == std::string::npos) end = all.size();
        auto tokenizer = Tokenizer::FromDirectory(all.substr(start, end - start));
        if (tokenizer.ok()) list->push_back(std::move(*tokenizer));
        start = end + 1;
      }
    }
    return list;
  }();
  return *tokenizers;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = flotilla::tokenizer::FindInvalidUtf8(text) == std::string_view::npos;
  for (const auto& tokenizer : Tokenizers()) {
    auto encoding = tokenizer->Encode(text);
    if (valid != encoding.ok()) {
      std::fprintf(stderr, "valid=%d but Encode returned %s\n", valid, encoding.status().ToString().c_str());
      std::abort();
    }
    if (!encoding.ok()) continue;
    (void)tokenizer->EncodePair(text.substr(0, size / 2), text.substr(size / 2));
    std::vector<uint32_t> ids = encoding->ids;
    for (size_t i = 0; i + 1 < size && i < 64; i += 2) ids.push_back(data[i] | (data[i + 1] << 8));
    auto decoded = tokenizer->Decode(ids, size % 2 == 0);
    if (decoded.ok() && flotilla::tokenizer::FindInvalidUtf8(*decoded) != std::string::npos) std::abort();
    flotilla::tokenizer::IncrementalDecoder stream(*tokenizer, false);
    for (uint32_t id : ids) {
      auto piece = stream.Step(id);
      if (piece.ok() && flotilla::tokenizer::FindInvalidUtf8(*piece) != std::string::npos) std::abort();
    }
  }
  (void)Tokenizer::FromJson(text, "fuzz input");
  return 0;
}
