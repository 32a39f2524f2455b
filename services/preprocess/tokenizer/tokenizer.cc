#include "services/preprocess/tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <unicode/uchar.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "services/preprocess/tokenizer/thread_pool.h"
#include "services/preprocess/tokenizer/unicode.h"

namespace flotilla::tokenizer {
namespace {

using Json = nlohmann::json;

// The regex crate's \w (Unicode Word): Alphabetic, Mark, Decimal_Number, Connector_Punctuation,
// Join_Control; tokenizers tests single_word tokens with it.
bool IsWordCharacter(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  if (u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC)) return true;
  int32_t mask = U_MASK(u_charType(static_cast<UChar32>(c)));
  return (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

char32_t LastCharacter(std::string_view text) {
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t position = start;
  return DecodeUtf8(text, position);
}

// Byte index where the trailing whitespace of `text` starts (text.size() when there is none).
size_t TrailingWhitespaceStart(std::string_view text) {
  size_t start = text.size();
  while (start > 0) {
    size_t previous = start - 1;
    while (previous > 0 && (static_cast<unsigned char>(text[previous]) & 0xC0) == 0x80) --previous;
    size_t position = previous;
    if (!IsWhitespace(DecodeUtf8(text, position))) break;
    start = previous;
  }
  return start;
}

size_t LeadingWhitespaceLength(std::string_view text) {
  size_t position = 0;
  while (position < text.size()) {
    size_t start = position;
    if (!IsWhitespace(DecodeUtf8(text, position))) return start;
  }
  return text.size();
}

// Byte offsets to character offsets the way tokenizers' BytesToCharOffsetConverter does it.
class CharOffsetConverter {
 public:
  explicit CharOffsetConverter(std::string_view text) : size_(text.size()) {
    ascii_ = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    if (ascii_) return;
    char_of_byte_.resize(text.size());
    uint32_t index = 0;
    size_t position = 0;
    while (position < text.size()) {
      size_t length = std::min<size_t>(Utf8Length(static_cast<unsigned char>(text[position])), text.size() - position);
      for (size_t i = 0; i < length; ++i) char_of_byte_[position + i] = index;
      position += length;
      ++index;
    }
  }
  Offsets Convert(Offsets offsets) const {
    if (ascii_ || offsets.start >= size_) return offsets;
    uint32_t start = char_of_byte_[offsets.start];
    if (offsets.end < size_) return {start, char_of_byte_[offsets.end]};
    uint32_t last = offsets.end >= 1 && offsets.end - 1 < size_ ? char_of_byte_[offsets.end - 1] : start;
    return {start, last + 1};
  }

 private:
  size_t size_;
  bool ascii_ = true;
  std::vector<uint32_t> char_of_byte_;
};

absl::Status CheckUtf8(std::string_view text, const char* operation) {
  size_t invalid = FindInvalidUtf8(text);
  if (invalid == std::string_view::npos) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      operation, ": input is not valid UTF-8: invalid byte 0x",
      absl::Hex(static_cast<unsigned char>(text[invalid]), absl::kZeroPad2), " at byte offset ", invalid,
      " of ", text.size()));
}

void Truncate(Encoding& encoding, size_t max_length, bool from_left) {
  if (encoding.size() <= max_length) return;
  auto cut = [&](auto& values) {
    if (from_left) {
      values.erase(values.begin(), values.end() - max_length);
    } else {
      values.resize(max_length);
    }
  };
  cut(encoding.ids);
  cut(encoding.type_ids);
  cut(encoding.tokens);
  cut(encoding.offsets);
  cut(encoding.word_ids);
  cut(encoding.special_tokens_mask);
  cut(encoding.attention_mask);
}

absl::Status TruncateEncodings(Encoding& encoding, std::optional<Encoding>& pair,
                               const TruncationParams& params, size_t max_length) {
  const bool left = params.truncate_left;
  if (max_length == 0) {
    Truncate(encoding, 0, left);
    if (pair) Truncate(*pair, 0, left);
    return absl::OkStatus();
  }
  size_t total = encoding.size() + (pair ? pair->size() : 0);
  if (total <= max_length) return absl::OkStatus();
  size_t to_remove = total - max_length;
  switch (params.strategy) {
    case TruncationParams::Strategy::kLongestFirst:
      if (pair) {
        size_t first = encoding.size(), second = pair->size();
        bool swap = false;
        if (first > second) {
          swap = true;
          std::swap(first, second);
        }
        if (first > max_length) {
          second = first;
        } else {
          second = std::max(first, max_length - first);
        }
        if (first + second > max_length) {
          first = max_length / 2;
          second = first + max_length % 2;
        }
        if (swap) std::swap(first, second);
        Truncate(encoding, first, left);
        Truncate(*pair, second, left);
      } else {
        Truncate(encoding, total - to_remove, left);
      }
      break;
    case TruncationParams::Strategy::kOnlyFirst:
    case TruncationParams::Strategy::kOnlySecond: {
      Encoding* target = &encoding;
      if (params.strategy == TruncationParams::Strategy::kOnlySecond) {
        if (!pair) return absl::InvalidArgumentError("Truncate: strategy only_second needs a pair of sequences");
        target = &*pair;
      }
      if (target->size() <= to_remove) {
        return absl::InvalidArgumentError(absl::StrCat("Truncate: the sequence to truncate has ", target->size(), " tokens but ", to_remove, " must go; use another strategy"));
      }
      Truncate(*target, target->size() - to_remove, left);
      break;
    }
  }
  return absl::OkStatus();
}

void Pad(Encoding& encoding, size_t length, const PaddingParams& params) {
  if (encoding.size() >= length) return;
  size_t count = length - encoding.size();
  auto pad = [&](auto& values, auto value) {
    if (params.pad_left) {
      values.insert(values.begin(), count, value);
    } else {
      values.insert(values.end(), count, value);
    }
  };
  pad(encoding.ids, params.pad_id);
  pad(encoding.type_ids, params.pad_type_id);
  pad(encoding.tokens, params.pad_token);
  pad(encoding.offsets, Offsets{0, 0});
  pad(encoding.word_ids, int32_t{-1});
  pad(encoding.special_tokens_mask, uint32_t{1});
  pad(encoding.attention_mask, uint32_t{0});
}

void PadEncodings(std::vector<Encoding>& encodings, const PaddingParams& params) {
  if (encodings.empty()) return;
  size_t length = 0;
  for (const auto& encoding : encodings) length = std::max(length, encoding.size());
  if (params.fixed_length) length = *params.fixed_length;
  if (params.pad_to_multiple_of && *params.pad_to_multiple_of > 0 && length % *params.pad_to_multiple_of > 0) {
    length += *params.pad_to_multiple_of - length % *params.pad_to_multiple_of;
  }
  for (auto& encoding : encodings) Pad(encoding, length, params);
}

}  // namespace

// --- AddedTokenMatcher -------------------------------------------------------------------------

void Tokenizer::AddedTokenMatcher::Add(std::string_view content, size_t token_index) {
  if (content.empty()) return;
  uint32_t node = 0;
  for (char byte : content) {
    uint64_t edge = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(byte);
    auto found = children_.find(edge);
    if (found == children_.end()) {
      uint32_t child = static_cast<uint32_t>(terminal_.size());
      terminal_.push_back(-1);
      children_.emplace(edge, child);
      node = child;
    } else {
      node = found->second;
    }
  }
  if (terminal_[node] < 0) terminal_[node] = static_cast<int64_t>(token_index);
  first_bytes_[static_cast<uint8_t>(content[0])] = true;
}

template <typename Callback>
void Tokenizer::AddedTokenMatcher::ForEachMatch(std::string_view text, Callback&& on_match) const {
  size_t start = 0;
  while (start < text.size()) {
    if (!first_bytes_[static_cast<uint8_t>(text[start])]) {
      ++start;
      continue;
    }
    uint32_t node = 0;
    size_t best_end = 0;
    int64_t best_token = -1;
    for (size_t i = start; i < text.size(); ++i) {
      auto found = children_.find((static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[i]));
      if (found == children_.end()) break;
      node = found->second;
      if (terminal_[node] >= 0) {
        best_end = i + 1;
        best_token = terminal_[node];
      }
    }
    if (best_token >= 0) {
      on_match(start, best_end, static_cast<size_t>(best_token));
      start = best_end;
    } else {
      ++start;
    }
  }
}

// --- Loading -------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(const std::string& directory) {
  return FromFile(directory + "/tokenizer.json");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("LoadTokenizer(", path, "): cannot open the file"));
  std::stringstream contents;
  contents << file.rdbuf();
  return FromJson(contents.str(), path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text, const std::string& source) {
  Json json = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    // Parse again with exceptions to get the position of the error.
    try {
      (void)Json::parse(json_text);
    } catch (const Json::exception& error) {  // parse_error, or out_of_range for a number like 8e8888
      return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): not valid JSON: ", error.what()));
    }
    return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): not valid JSON"));
  }
  auto prefixed = [&](const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat("LoadTokenizer(", source, "): ", status.message()));
  };
  if (!json.is_object()) return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): expected a JSON object at the top level"));
  auto tokenizer = std::unique_ptr<Tokenizer>(new Tokenizer());
  if (!json.contains("model")) return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): missing \"model\""));
  try {
    auto model = ModelFromJson(json["model"], "model");
    if (!model.ok()) return prefixed(model.status());
    tokenizer->model_ = std::move(*model);
    if (json.contains("normalizer") && !json["normalizer"].is_null()) {
      auto normalizer = NormalizerFromJson(json["normalizer"], "normalizer");
      if (!normalizer.ok()) return prefixed(normalizer.status());
      tokenizer->normalizer_ = std::move(*normalizer);
    }
    if (json.contains("pre_tokenizer") && !json["pre_tokenizer"].is_null()) {
      auto pre_tokenizer = PreTokenizerFromJson(json["pre_tokenizer"], "pre_tokenizer");
      if (!pre_tokenizer.ok()) return prefixed(pre_tokenizer.status());
      tokenizer->pre_tokenizer_ = std::move(*pre_tokenizer);
    }
    if (json.contains("post_processor") && !json["post_processor"].is_null()) {
      auto post_processor = PostProcessorFromJson(json["post_processor"], "post_processor");
      if (!post_processor.ok()) return prefixed(post_processor.status());
      tokenizer->post_processor_ = std::move(*post_processor);
    }
    if (json.contains("decoder") && !json["decoder"].is_null()) {
      auto decoder = DecoderFromJson(json["decoder"], "decoder");
      if (!decoder.ok()) return prefixed(decoder.status());
      tokenizer->decoder_ = std::move(*decoder);
    }
    absl::Status added = tokenizer->LoadAddedTokens(json, source);
    if (!added.ok()) return added;
    if (json.contains("truncation") && json["truncation"].is_object()) {
      const Json& truncation = json["truncation"];
      TruncationParams params;
      params.max_length = truncation.value("max_length", size_t{512});
      std::string strategy = truncation.value("strategy", "LongestFirst");
      if (strategy == "OnlyFirst") params.strategy = TruncationParams::Strategy::kOnlyFirst;
      else if (strategy == "OnlySecond") params.strategy = TruncationParams::Strategy::kOnlySecond;
      else if (strategy != "LongestFirst") return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): truncation.strategy: expected LongestFirst, OnlyFirst or OnlySecond but got ", strategy));
      params.truncate_left = truncation.value("direction", "Right") == "Left";
      tokenizer->truncation_ = params;
    }
    if (json.contains("padding") && json["padding"].is_object()) {
      const Json& padding = json["padding"];
      PaddingParams params;
      if (padding.contains("strategy") && padding["strategy"].is_object() && padding["strategy"].contains("Fixed")) {
        params.fixed_length = padding["strategy"]["Fixed"].get<size_t>();
      }
      params.pad_left = padding.value("direction", "Right") == "Left";
      if (padding.contains("pad_to_multiple_of") && padding["pad_to_multiple_of"].is_number_unsigned()) {
        params.pad_to_multiple_of = padding["pad_to_multiple_of"].get<size_t>();
      }
      params.pad_id = padding.value("pad_id", 0u);
      params.pad_type_id = padding.value("pad_type_id", 0u);
      params.pad_token = padding.value("pad_token", std::string("[PAD]"));
      tokenizer->padding_ = params;
    }
  } catch (const Json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): unexpected JSON type: ", error.what()));
  }
  return tokenizer;
}

absl::Status Tokenizer::LoadAddedTokens(const Json& json, const std::string& source) {
  auto list = json.find("added_tokens");
  if (list == json.end() || list->is_null()) return absl::OkStatus();
  if (!list->is_array()) return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): added_tokens: expected an array"));
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& entry = (*list)[i];
    if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string() ||
        !entry.contains("id") || !entry["id"].is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat("LoadTokenizer(", source, "): added_tokens[", i, "]: expected {\"id\": integer, \"content\": string, ...} but got ", entry.dump().substr(0, 80)));
    }
    AddedToken token;
    token.id = entry["id"].get<uint32_t>();
    token.content = entry["content"].get<std::string>();
    token.single_word = entry.value("single_word", false);
    token.lstrip = entry.value("lstrip", false);
    token.rstrip = entry.value("rstrip", false);
    token.special = entry.value("special", false);
    token.normalized = entry.value("normalized", !token.special);
    added_token_ids_[token.content] = token.id;
    added_token_index_[token.id] = added_tokens_.size();
    if (token.special) special_contents_.insert(token.content);
    added_tokens_.push_back(token);
  }
  // Matching order: special tokens first, then the others (tokenizers' refresh_added_tokens).
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t index = 0; index < added_tokens_.size(); ++index) {
      const AddedToken& token = added_tokens_[index];
      if (token.special != (pass == 0)) continue;
      if (!token.normalized) {
        raw_matcher_.Add(token.content, index);
      } else {
        NormalizedString content(token.content);
        if (normalizer_) normalizer_->Normalize(content);
        normalized_matcher_.Add(content.get(), index);
      }
    }
  }
  return absl::OkStatus();
}

// --- Encoding --------------------------------------------------------------------------------------

void Tokenizer::SplitOnAddedTokens(const AddedTokenMatcher& matcher, PreTokenizedString& pretokenized,
                                   bool normalize) const {
  std::vector<Split> new_splits;
  for (Split& split : pretokenized.splits) {
    if (split.tokenized) {
      new_splits.push_back(std::move(split));
      continue;
    }
    NormalizedString& normalized = split.normalized;
    if (normalize && normalizer_) normalizer_->Normalize(normalized);
    const std::string& text = normalized.get();
    if (matcher.empty() || text.empty()) {
      if (!text.empty()) new_splits.push_back(Split{std::move(normalized), {}, false});
      continue;
    }
    size_t start_offset = 0;
    auto push = [&](size_t start, size_t end, const AddedToken* token) {
      if (start == end) return;
      Split piece{normalized.Slice(start, end), {}, false};
      if (token != nullptr) {
        piece.tokens.push_back(Token{token->id, piece.normalized.get(), {0, static_cast<uint32_t>(end - start)}});
        piece.tokenized = true;
      }
      new_splits.push_back(std::move(piece));
    };
    matcher.ForEachMatch(text, [&](size_t start, size_t stop, size_t index) {
      const AddedToken& token = added_tokens_[index];
      if (token.single_word) {
        bool start_space = start == 0 || !IsWordCharacter(LastCharacter(std::string_view(text).substr(0, start)));
        size_t position = stop;
        bool stop_space = stop == text.size() || !IsWordCharacter(DecodeUtf8(text, position));
        if (!start_space || !stop_space) return;
      }
      if (token.lstrip) {
        start = std::max(TrailingWhitespaceStart(std::string_view(text).substr(0, start)), start_offset);
      }
      if (token.rstrip) stop += LeadingWhitespaceLength(std::string_view(text).substr(stop));
      if (start_offset < start) push(start_offset, start, nullptr);
      push(start, stop, &token);
      start_offset = stop;
    });
    if (start_offset != text.size()) push(start_offset, text.size(), nullptr);
  }
  pretokenized.splits = std::move(new_splits);
}

absl::StatusOr<Encoding> Tokenizer::EncodeSequence(std::string_view text, uint32_t type_id,
                                                   OffsetType offset_type) const {
  PreTokenizedString pretokenized;
  if (!text.empty()) pretokenized.splits.push_back(Split{NormalizedString(text), {}, false});
  if (!raw_matcher_.empty()) SplitOnAddedTokens(raw_matcher_, pretokenized, /*normalize=*/false);
  SplitOnAddedTokens(normalized_matcher_, pretokenized, /*normalize=*/true);
  if (pre_tokenizer_) pre_tokenizer_->PreTokenize(pretokenized);

  Encoding encoding;
  std::optional<CharOffsetConverter> converter;
  if (offset_type == OffsetType::kChar) converter.emplace(text);
  std::vector<Token> tokens;
  size_t total = 0;
  for (const Split& split : pretokenized.splits) total += split.tokenized ? split.tokens.size() : split.normalized.size() / 3 + 1;
  encoding.ids.reserve(total);
  encoding.tokens.reserve(total);
  encoding.offsets.reserve(total);
  encoding.word_ids.reserve(total);
  for (size_t index = 0; index < pretokenized.splits.size(); ++index) {
    const Split& split = pretokenized.splits[index];
    const std::vector<Token>* split_tokens = &split.tokens;
    if (!split.tokenized) {
      tokens.clear();
      absl::Status status = model_->Tokenize(split.normalized.get(), tokens);
      if (!status.ok()) return status;
      split_tokens = &tokens;
    }
    const Offsets original_range = split.normalized.OriginalOffsets();
    for (const Token& token : *split_tokens) {
      Offsets offsets;
      if (!split.normalized.ConvertOffsets(token.offsets.start, token.offsets.end, offsets)) {
        offsets = {original_range.start + token.offsets.start, original_range.start + token.offsets.end};
      }
      if (converter) offsets = converter->Convert(offsets);
      encoding.ids.push_back(token.id);
      encoding.tokens.push_back(token.value);
      encoding.offsets.push_back(offsets);
      encoding.word_ids.push_back(static_cast<int32_t>(index));
    }
  }
  encoding.type_ids.assign(encoding.ids.size(), type_id);
  encoding.special_tokens_mask.assign(encoding.ids.size(), 0);
  encoding.attention_mask.assign(encoding.ids.size(), 1);
  return encoding;
}

absl::StatusOr<Encoding> Tokenizer::PostProcess(Encoding encoding, std::optional<Encoding> pair,
                                                const EncodeOptions& options) const {
  const bool add_special_tokens = options.add_special_tokens;
  const TruncationParams* truncation = options.truncation ? options.truncation : (truncation_ ? &*truncation_ : nullptr);
  if (truncation) {
    size_t max_length = truncation->max_length;
    size_t added = post_processor_ ? post_processor_->AddedTokens(pair.has_value()) : 0;
    if (add_special_tokens && added > 0) max_length = max_length > added ? max_length - added : 0;
    absl::Status status = TruncateEncodings(encoding, pair, *truncation, max_length);
    if (!status.ok()) return status;
  }
  std::vector<Encoding> encodings;
  encodings.push_back(std::move(encoding));
  if (pair) encodings.push_back(std::move(*pair));
  if (post_processor_) {
    absl::Status status = post_processor_->ProcessEncodings(encodings, add_special_tokens);
    if (!status.ok()) return status;
  }
  Encoding result = std::move(encodings[0]);
  for (size_t i = 1; i < encodings.size(); ++i) result.Append(encodings[i]);
  if (padding_ && options.apply_padding) {
    std::vector<Encoding> single;
    single.push_back(std::move(result));
    PadEncodings(single, *padding_);
    result = std::move(single[0]);
  }
  return result;
}

absl::StatusOr<Encoding> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  absl::Status valid = CheckUtf8(text, "Encode");
  if (!valid.ok()) return valid;
  auto encoding = EncodeSequence(text, 0, options.offset_type);
  if (!encoding.ok()) return encoding.status();
  return PostProcess(std::move(*encoding), std::nullopt, options);
}

absl::StatusOr<Encoding> Tokenizer::EncodePair(std::string_view text, std::string_view pair,
                                               const EncodeOptions& options) const {
  absl::Status valid = CheckUtf8(text, "Encode(first sequence)");
  if (!valid.ok()) return valid;
  valid = CheckUtf8(pair, "Encode(pair sequence)");
  if (!valid.ok()) return valid;
  auto encoding = EncodeSequence(text, 0, options.offset_type);
  if (!encoding.ok()) return encoding.status();
  auto pair_encoding = EncodeSequence(pair, 1, options.offset_type);
  if (!pair_encoding.ok()) return pair_encoding.status();
  return PostProcess(std::move(*encoding), std::move(*pair_encoding), options);
}

namespace {

// Encodes items 0..count-1 with `encode_one` on the shared pool; the first failure (lowest index)
// is returned, prefixed with `what` and the index, so a batch fails as its first bad item would.
template <typename EncodeOne>
absl::StatusOr<std::vector<Encoding>> EncodeEach(size_t count, const char* what, EncodeOne encode_one) {
  std::vector<Encoding> encodings(count);
  std::vector<absl::Status> statuses(count);
  ThreadPool::Shared().ParallelFor(count, [&](size_t i) {
    auto encoding = encode_one(i);
    if (encoding.ok()) {
      encodings[i] = std::move(*encoding);
    } else {
      statuses[i] = encoding.status();
    }
  });
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (!statuses[i].ok()) return absl::Status(statuses[i].code(), absl::StrCat(what, i, ": ", statuses[i].message()));
  }
  return encodings;
}

}  // namespace

absl::StatusOr<std::vector<Encoding>> Tokenizer::EncodeBatch(std::span<const std::string_view> texts,
                                                             const EncodeOptions& options) const {
  auto encodings = EncodeEach(texts.size(), "EncodeBatch: text ", [&](size_t i) { return Encode(texts[i], options); });
  if (encodings.ok() && padding_ && options.apply_padding) PadEncodings(*encodings, *padding_);
  return encodings;
}

absl::StatusOr<std::vector<Encoding>> Tokenizer::EncodePairBatch(
    std::span<const std::pair<std::string_view, std::string_view>> pairs, const EncodeOptions& options) const {
  auto encodings = EncodeEach(pairs.size(), "EncodePairBatch: pair ",
                              [&](size_t i) { return EncodePair(pairs[i].first, pairs[i].second, options); });
  if (encodings.ok() && padding_ && options.apply_padding) PadEncodings(*encodings, *padding_);
  return encodings;
}

// --- Decoding --------------------------------------------------------------------------------------

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const uint32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (uint32_t id : ids) {
    if (auto added = added_token_index_.find(id); added != added_token_index_.end()) {
      const AddedToken& token = added_tokens_[added->second];
      if (skip_special_tokens && token.special) continue;
      tokens.push_back(token.content);
      continue;
    }
    const std::string* token = model_->IdToToken(id);
    if (token == nullptr) continue;  // tokenizers drops ids it does not know
    if (skip_special_tokens && special_contents_.contains(*token)) continue;
    tokens.push_back(*token);
  }
  if (!decoder_) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined.push_back(' ');
      joined += tokens[i];
    }
    return joined;
  }
  decoder_->DecodeChain(tokens);
  std::string text;
  for (const auto& token : tokens) text += token;
  return text;
}

std::optional<uint32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto found = added_token_ids_.find(token); found != added_token_ids_.end()) return found->second;
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(uint32_t id) const {
  if (auto found = added_token_index_.find(id); found != added_token_index_.end()) {
    return added_tokens_[found->second].content;
  }
  const std::string* token = model_->IdToToken(id);
  if (token == nullptr) return std::nullopt;
  return *token;
}

size_t Tokenizer::VocabSize() const {
  size_t size = model_->VocabSize();
  for (const auto& token : added_tokens_) {
    if (!model_->IdToToken(token.id)) ++size;
  }
  return size;
}

// --- IncrementalDecoder ------------------------------------------------------------------------

absl::StatusOr<std::string> IncrementalDecoder::Step(uint32_t id) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  auto ends_with_replacement = [](const std::string& text) {
    return text.size() >= 3 && std::string_view(text).substr(text.size() - 3) == kReplacement;
  };
  if (prefix_.empty() && !ids_.empty()) {
    auto new_prefix = tokenizer_.Decode(ids_, skip_special_tokens_);
    if (!new_prefix.ok()) return new_prefix.status();
    if (!ends_with_replacement(*new_prefix)) {
      prefix_ = std::move(*new_prefix);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  auto text = tokenizer_.Decode(ids_, skip_special_tokens_);
  if (!text.ok()) return text.status();
  if (text->size() > prefix_.size() && !ends_with_replacement(*text)) {
    if (text->compare(0, prefix_.size(), prefix_) != 0) {
      return absl::InternalError("IncrementalDecoder.Step: the decoded text no longer starts with the text already emitted");
    }
    std::string new_text = text->substr(prefix_.size());
    size_t new_prefix_index = ids_.size() - prefix_index_;
    ids_.erase(ids_.begin(), ids_.begin() + prefix_index_);
    auto prefix = tokenizer_.Decode(ids_, skip_special_tokens_);
    if (!prefix.ok()) return prefix.status();
    prefix_ = std::move(*prefix);
    prefix_index_ = new_prefix_index;
    return new_text;
  }
  return std::string();
}

}  // namespace flotilla::tokenizer
