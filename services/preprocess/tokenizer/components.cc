// Every pipeline stage of components.h, grouped: helpers, normalizers, pre-tokenizers, models,
// post-processors, decoders. Behaviour follows the Rust `tokenizers` sources of the same names.
#include "services/preprocess/tokenizer/components.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <mutex>
#include <queue>

#include <unicode/brkiter.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "services/preprocess/tokenizer/unicode.h"

namespace flotilla::tokenizer {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// JSON helpers: every error names the path of the offending field.

absl::Status FieldError(const std::string& path, absl::string_view key, absl::string_view expected,
                        const Json& actual) {
  return absl::InvalidArgumentError(absl::StrCat(path, ".", key, ": expected ", expected,
                                                 " but got ", actual.dump().substr(0, 80)));
}

absl::StatusOr<bool> GetBool(const Json& json, const std::string& path, const char* key,
                             bool default_value) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return default_value;
  if (!it->is_boolean()) return FieldError(path, key, "a boolean", *it);
  return it->get<bool>();
}

absl::StatusOr<std::string> GetString(const Json& json, const std::string& path, const char* key,
                                      std::optional<std::string> default_value = std::nullopt) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) {
    if (default_value) return *default_value;
    return absl::InvalidArgumentError(absl::StrCat(path, ".", key, ": missing (expected a string)"));
  }
  if (!it->is_string()) return FieldError(path, key, "a string", *it);
  return it->get<std::string>();
}

absl::StatusOr<std::optional<std::string>> GetOptionalString(const Json& json,
                                                             const std::string& path,
                                                             const char* key) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) return FieldError(path, key, "a string or null", *it);
  return std::optional<std::string>(it->get<std::string>());
}

absl::StatusOr<uint64_t> GetUnsigned(const Json& json, const std::string& path, const char* key,
                                     std::optional<uint64_t> default_value = std::nullopt) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) {
    if (default_value) return *default_value;
    return absl::InvalidArgumentError(absl::StrCat(path, ".", key, ": missing (expected an integer)"));
  }
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
    return FieldError(path, key, "a non-negative integer", *it);
  }
  return it->get<uint64_t>();
}

absl::StatusOr<char32_t> GetChar(const Json& json, const std::string& path, const char* key,
                                 char32_t default_value) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return default_value;
  if (!it->is_string()) return FieldError(path, key, "a one-character string", *it);
  std::string text = it->get<std::string>();
  if (text.empty() || FindInvalidUtf8(text) != std::string::npos ||
      static_cast<size_t>(Utf8Length(static_cast<unsigned char>(text[0]))) != text.size()) {
    return FieldError(path, key, "a one-character string", *it);
  }
  size_t position = 0;
  return DecodeUtf8(text, position);
}

// {"String": "..."} or {"Regex": "..."} as a Pattern.
absl::StatusOr<std::shared_ptr<const Pattern>> GetPattern(const Json& json, const std::string& path,
                                                          const char* key) {
  auto it = json.find(key);
  if (it == json.end() || !it->is_object()) return FieldError(path, key, "{\"String\"|\"Regex\": ...}", json.value(key, Json()));
  if (auto literal = it->find("String"); literal != it->end() && literal->is_string()) {
    std::string text = literal->get<std::string>();
    auto regex = Regex::Compile(RegexEscape(text));
    if (!regex.ok()) return regex.status();
    return std::shared_ptr<const Pattern>(*regex);
  }
  if (auto source = it->find("Regex"); source != it->end() && source->is_string()) {
    auto regex = Regex::Compile(source->get<std::string>());
    if (!regex.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".", key, ": ", regex.status().message()));
    }
    return std::shared_ptr<const Pattern>(*regex);
  }
  return FieldError(path, key, "{\"String\"|\"Regex\": string}", *it);
}

absl::StatusOr<std::string> GetType(const Json& json, const std::string& path) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected an object but got ", json.dump().substr(0, 80)));
  }
  return GetString(json, path, "type");
}

absl::Status UnknownType(const std::string& path, absl::string_view type, absl::string_view stage) {
  return absl::UnimplementedError(
      absl::StrCat(path, ".type: unsupported ", stage, " \"", type, "\""));
}

#define FLOTILLA_ASSIGN(lhs, expression)       \
  auto lhs##_or = (expression);                \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = std::move(*lhs##_or)

// ---------------------------------------------------------------------------------------------
// Byte-level table (GPT-2's bytes_to_unicode).

struct ByteLevelTable {
  std::array<std::string, 256> characters;
  absl::flat_hash_map<char32_t, uint8_t> bytes;
  ByteLevelTable() {
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      char32_t c = printable[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      characters[b] = Utf8(c);
      bytes[c] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelTable& Table() {
  static const ByteLevelTable table;
  return table;
}

// ---------------------------------------------------------------------------------------------
// Normalizers

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> normalizers)
      : normalizers_(std::move(normalizers)) {}
  void Normalize(NormalizedString& normalized) const override {
    for (const auto& normalizer : normalizers_) normalizer->Normalize(normalized);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> normalizers_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(std::string form) : form_(std::move(form)) {}
  void Normalize(NormalizedString& normalized) const override { normalized.UnicodeNormalize(form_); }

 private:
  std::string form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(NormalizedString& normalized) const override { normalized.Lowercase(); }
};

// Removes every combining mark (Mn, Mc, Me); BertNormalizer's accent stripping removes only Mn.
class StripAccentsNormalizer : public Normalizer {
 public:
  void Normalize(NormalizedString& normalized) const override {
    normalized.Filter([](char32_t c) {
      if (c < 0x300) return true;
      return (U_MASK(u_charType(static_cast<UChar32>(c))) & U_GC_M_MASK) == 0;
    });
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(NormalizedString& normalized) const override { normalized.Strip(left_, right_); }

 private:
  bool left_, right_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::shared_ptr<const Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Normalize(NormalizedString& normalized) const override {
    normalized.Replace(*pattern_, content_);
  }

 private:
  std::shared_ptr<const Pattern> pattern_;
  std::string content_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(NormalizedString& normalized) const override { normalized.Prepend(prefix_); }

 private:
  std::string prefix_;
};

bool IsChineseChar(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool BertIsWhitespace(char32_t c) { return c == '\t' || c == '\n' || c == '\r' || IsWhitespace(c); }
bool BertIsControl(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return IsOther(c);
}

class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool handle_chinese_chars, bool strip_accents, bool lowercase)
      : clean_text_(clean_text),
        handle_chinese_chars_(handle_chinese_chars),
        strip_accents_(strip_accents),
        lowercase_(lowercase) {}
  void Normalize(NormalizedString& normalized) const override {
    if (clean_text_) {
      normalized.Filter([](char32_t c) { return !(c == 0 || c == 0xFFFD || BertIsControl(c)); });
      normalized.Map([](char32_t c) { return BertIsWhitespace(c) ? U' ' : c; });
    }
    if (handle_chinese_chars_) {
      const std::string& text = normalized.get();
      bool any = false;
      size_t position = 0;
      while (position < text.size() && !any) any = IsChineseChar(DecodeUtf8(text, position));
      if (any) {
        std::vector<CharChange> changes;
        changes.reserve(text.size() + 16);
        position = 0;
        while (position < text.size()) {
          char32_t c = DecodeUtf8(text, position);
          if (IsChineseChar(c)) {
            changes.push_back({U' ', 0});
            changes.push_back({c, 1});
            changes.push_back({U' ', 1});
          } else {
            changes.push_back({c, 0});
          }
        }
        normalized.Transform(changes, 0);
      }
    }
    if (strip_accents_) {
      normalized.UnicodeNormalize("NFD");
      normalized.Filter([](char32_t c) { return !IsMarkNonspacing(c); });
    }
    if (lowercase_) normalized.Lowercase();
  }

 private:
  bool clean_text_, handle_chinese_chars_, strip_accents_, lowercase_;
};

// The sentencepiece normalization table: a darts-clone double-array trie over UTF-8 byte strings
// whose values index NUL-terminated replacements. Layout of the blob: u32 trie size in bytes
// (little-endian), the trie units, then the replacement strings.
class PrecompiledNormalizer : public Normalizer {
 public:
  static absl::StatusOr<std::unique_ptr<PrecompiledNormalizer>> Create(const std::string& blob,
                                                                       const std::string& path) {
    if (blob.size() < 4) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".precompiled_charsmap: expected at least 4 bytes but got ", blob.size()));
    }
    uint32_t trie_size = static_cast<uint8_t>(blob[0]) | (static_cast<uint8_t>(blob[1]) << 8) |
                         (static_cast<uint8_t>(blob[2]) << 16) |
                         (static_cast<uint32_t>(static_cast<uint8_t>(blob[3])) << 24);
    if (trie_size % 4 != 0 || 4 + static_cast<size_t>(trie_size) > blob.size()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".precompiled_charsmap: trie size ", trie_size, " does not fit in ", blob.size(), " bytes"));
    }
    auto normalizer = std::unique_ptr<PrecompiledNormalizer>(new PrecompiledNormalizer());
    normalizer->units_.resize(trie_size / 4);
    for (size_t i = 0; i < normalizer->units_.size(); ++i) {
      const auto* bytes = reinterpret_cast<const uint8_t*>(blob.data() + 4 + 4 * i);
      normalizer->units_[i] = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (static_cast<uint32_t>(bytes[3]) << 24);
    }
    normalizer->normalized_ = blob.substr(4 + trie_size);
    if (normalizer->units_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".precompiled_charsmap: empty trie"));
    }
    return normalizer;
  }

  void Normalize(NormalizedString& normalized) const override {
    const std::string& text = normalized.get();
    if (text.empty()) return;
    std::vector<CharChange> changes;
    changes.reserve(text.size());
    bool modified = false;
    auto append_replacement = [&](std::string_view old_part, std::string_view new_part) {
      int old_count = CountChars(old_part), new_count = CountChars(new_part);
      size_t position = 0;
      while (position < new_part.size()) changes.push_back({DecodeUtf8(new_part, position), 0});
      int difference = new_count - old_count;
      if (difference > 0) {
        for (int i = 0; i < difference && i < static_cast<int>(changes.size()); ++i) {
          changes[changes.size() - 1 - i].change = 1;
        }
      } else if (difference < 0 && !changes.empty()) {
        changes.back().change += difference;
      }
    };
    auto handle_grapheme = [&](std::string_view grapheme) {
      if (grapheme.size() < 6) {
        if (auto replacement = Lookup(grapheme)) {
          modified = true;
          append_replacement(grapheme, *replacement);
          return;
        }
      }
      size_t position = 0;
      while (position < grapheme.size()) {
        size_t start = position;
        char32_t c = DecodeUtf8(grapheme, position);
        std::string_view part = grapheme.substr(start, position - start);
        if (auto replacement = Lookup(part)) {
          modified = true;
          append_replacement(part, *replacement);
        } else {
          changes.push_back({c, 0});
        }
      }
    };
    bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    if (ascii) {
      // Every ASCII character is its own grapheme except "\r\n".
      for (size_t i = 0; i < text.size(); ++i) {
        size_t length = (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ? 2 : 1;
        handle_grapheme(std::string_view(text).substr(i, length));
        i += length - 1;
      }
    } else {
      UErrorCode error = U_ZERO_ERROR;
      thread_local std::unique_ptr<icu::BreakIterator> breaker(
          icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), error));
      icu::UnicodeString utf16 = icu::UnicodeString::fromUTF8(text);
      breaker->setText(utf16);
      // Map UTF-16 boundaries back to UTF-8 byte positions.
      int32_t utf16_position = 0;
      size_t byte_position = 0;
      int32_t start = breaker->first();
      for (int32_t end = breaker->next(); end != icu::BreakIterator::DONE; start = end, end = breaker->next()) {
        size_t grapheme_start = byte_position;
        while (utf16_position < end) {
          char32_t c = DecodeUtf8(text, byte_position);
          utf16_position += c >= 0x10000 ? 2 : 1;
        }
        handle_grapheme(std::string_view(text).substr(grapheme_start, byte_position - grapheme_start));
      }
      (void)start;
    }
    if (modified) normalized.Transform(changes, 0);
  }

 private:
  PrecompiledNormalizer() = default;

  static int CountChars(std::string_view text) {
    int count = 0;
    for (char c : text) count += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    return count;
  }

  // The replacement of the shortest key that is a prefix of `chunk` (spm_precompiled's transform).
  std::optional<std::string_view> Lookup(std::string_view chunk) const {
    auto offset = [](uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); };
    auto label = [](uint32_t unit) { return unit & ((1u << 31) | 0xFF); };
    auto has_leaf = [](uint32_t unit) { return ((unit >> 8) & 1) == 1; };
    size_t node = 0;
    uint32_t unit = units_[0];
    node ^= offset(unit);
    for (char byte_char : chunk) {
      auto byte = static_cast<uint8_t>(byte_char);
      if (byte == 0) break;
      node ^= byte;
      if (node >= units_.size()) return std::nullopt;
      unit = units_[node];
      if (label(unit) != byte) return std::nullopt;
      node ^= offset(unit);
      if (node >= units_.size()) return std::nullopt;
      if (has_leaf(unit)) {
        uint32_t value = units_[node] & ((1u << 31) - 1);
        if (value >= normalized_.size()) return std::nullopt;
        size_t end = normalized_.find('\0', value);
        if (end == std::string::npos) end = normalized_.size();
        return std::string_view(normalized_).substr(value, end - value);
      }
    }
    return std::nullopt;
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void Normalize(NormalizedString& normalized) const override {
    const std::string& text = normalized.get();
    std::vector<CharChange> changes;
    changes.reserve(text.size());
    size_t position = 0;
    while (position < text.size()) {
      size_t length = Utf8Length(static_cast<unsigned char>(text[position]));
      for (size_t i = 0; i < length; ++i) {
        size_t character_position = 0;
        const std::string& mapped = Table().characters[static_cast<uint8_t>(text[position + i])];
        changes.push_back({DecodeUtf8(mapped, character_position), i > 0 ? 1 : 0});
      }
      position += length;
    }
    normalized.Transform(changes, 0);
  }
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

SplitBehavior ParseBehavior(const std::string& name, bool* ok) {
  *ok = true;
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  *ok = false;
  return SplitBehavior::kRemoved;
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> pretokenizers)
      : pretokenizers_(std::move(pretokenizers)) {}
  void PreTokenize(PreTokenizedString& pretokenized) const override {
    for (const auto& pretokenizer : pretokenizers_) pretokenizer->PreTokenize(pretokenized);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> pretokenizers_;
};

// Splits every piece with a pattern and a behaviour: Split, Whitespace, WhitespaceSplit,
// Punctuation, Digits, CharDelimiterSplit.
class PatternPreTokenizer : public PreTokenizer {
 public:
  PatternPreTokenizer(std::shared_ptr<const Pattern> pattern, SplitBehavior behavior)
      : pattern_(std::move(pattern)), behavior_(behavior) {}
  void PreTokenize(PreTokenizedString& pretokenized) const override {
    pretokenized.SplitEach([&](size_t, NormalizedString& normalized, std::vector<NormalizedString>& pieces) {
      normalized.Split(*pattern_, behavior_, pieces);
    });
  }

 private:
  std::shared_ptr<const Pattern> pattern_;
  SplitBehavior behavior_;
};

class BertPreTokenizer : public PreTokenizer {
 public:
  void PreTokenize(PreTokenizedString& pretokenized) const override {
    static const CharPredicatePattern whitespace(IsWhitespace);
    static const CharPredicatePattern punctuation([](char32_t c) {
      return (c < 0x80 && std::ispunct(static_cast<int>(c))) || IsPunctuation(c);
    });
    pretokenized.SplitEach([&](size_t, NormalizedString& normalized, std::vector<NormalizedString>& pieces) {
      std::vector<NormalizedString> words;
      normalized.Split(whitespace, SplitBehavior::kRemoved, words);
      for (const auto& word : words) word.Split(punctuation, SplitBehavior::kIsolated, pieces);
    });
  }
};

const char kByteLevelPattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    regex_ = *Regex::Compile(kByteLevelPattern);
  }
  void PreTokenize(PreTokenizedString& pretokenized) const override {
    pretokenized.SplitEach([&](size_t, NormalizedString& normalized, std::vector<NormalizedString>& pieces) {
      if (add_prefix_space_ && normalized.get().rfind(' ', 0) != 0) normalized.Prepend(" ");
      if (use_regex_) {
        normalized.Split(*regex_, SplitBehavior::kIsolated, pieces);
      } else {
        pieces.push_back(std::move(normalized));
      }
    });
    for (Split& split : pretokenized.splits) {
      if (split.tokenized) continue;
      MapBytes(split.normalized);
    }
  }

  // Each byte of the text becomes its table character; all bytes of one input character keep that
  // character's alignment.
  static void MapBytes(NormalizedString& normalized) {
    const std::string& text = normalized.get();
    std::vector<CharChange> changes;
    changes.reserve(text.size());
    size_t position = 0;
    const auto& table = Table();
    while (position < text.size()) {
      size_t length = Utf8Length(static_cast<unsigned char>(text[position]));
      for (size_t i = 0; i < length; ++i) {
        const std::string& mapped = table.characters[static_cast<uint8_t>(text[position + i])];
        size_t character_position = 0;
        changes.push_back({DecodeUtf8(mapped, character_position), i > 0 ? 1 : 0});
      }
      position += length;
    }
    normalized.Transform(changes, 0);
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::shared_ptr<Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(Utf8(replacement)), scheme_(scheme), split_(split),
        space_(std::make_shared<CharPredicatePattern>([](char32_t c) { return c == U' '; })) {
    char32_t replacement_char = replacement;
    replacement_pattern_ = std::make_shared<CharPredicatePattern>(
        [replacement_char](char32_t c) { return c == replacement_char; });
  }
  void PreTokenize(PreTokenizedString& pretokenized) const override {
    pretokenized.SplitEach([&](size_t, NormalizedString& normalized, std::vector<NormalizedString>& pieces) {
      normalized.Replace(*space_, replacement_);
      bool starts_with_replacement = normalized.get().rfind(replacement_, 0) == 0;
      if (scheme_ == PrependScheme::kAlways && !starts_with_replacement) {
        normalized.Prepend(replacement_);
      } else if (scheme_ == PrependScheme::kFirst && !starts_with_replacement &&
                 normalized.OriginalOffsets().start == 0) {
        normalized.Prepend(replacement_);
      }
      if (split_) {
        normalized.Split(*replacement_pattern_, SplitBehavior::kMergedWithNext, pieces);
      } else {
        pieces.push_back(std::move(normalized));
      }
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  std::shared_ptr<const Pattern> space_;
  std::shared_ptr<const Pattern> replacement_pattern_;
};

absl::StatusOr<PrependScheme> GetPrependScheme(const Json& json, const std::string& path) {
  if (json.contains("prepend_scheme") && !json["prepend_scheme"].is_null()) {
    FLOTILLA_ASSIGN(scheme, GetString(json, path, "prepend_scheme"));
    if (scheme == "always") return PrependScheme::kAlways;
    if (scheme == "first") return PrependScheme::kFirst;
    if (scheme == "never") return PrependScheme::kNever;
    return FieldError(path, "prepend_scheme", "\"always\", \"first\" or \"never\"", json["prepend_scheme"]);
  }
  FLOTILLA_ASSIGN(add_prefix_space, GetBool(json, path, "add_prefix_space", true));
  return add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
}

// ---------------------------------------------------------------------------------------------
// Models

using Vocabulary = absl::flat_hash_map<std::string, uint32_t, StringViewHash, StringViewEqual>;

absl::StatusOr<Vocabulary> GetVocabulary(const Json& json, const std::string& path,
                                         std::vector<std::string>& reverse) {
  auto it = json.find("vocab");
  if (it == json.end() || !it->is_object()) {
    return FieldError(path, "vocab", "an object of token: id", json.value("vocab", Json()));
  }
  Vocabulary vocabulary;
  vocabulary.reserve(it->size());
  for (auto entry = it->begin(); entry != it->end(); ++entry) {
    if (!entry.value().is_number_unsigned()) {
      return FieldError(path, absl::StrCat("vocab[\"", entry.key(), "\"]"), "a non-negative integer id", entry.value());
    }
    uint64_t id = entry.value().get<uint64_t>();
    if (id > std::numeric_limits<uint32_t>::max()) {
      return FieldError(path, absl::StrCat("vocab[\"", entry.key(), "\"]"), "an id below 2^32", entry.value());
    }
    vocabulary[entry.key()] = static_cast<uint32_t>(id);
    if (reverse.size() <= id) reverse.resize(id + 1);
    reverse[id] = entry.key();
  }
  return vocabulary;
}

class BpeModel : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(const Json& json, const std::string& path) {
    auto model = std::unique_ptr<BpeModel>(new BpeModel());
    FLOTILLA_ASSIGN(vocabulary, GetVocabulary(json, path, model->reverse_));
    model->vocabulary_ = std::move(vocabulary);
    FLOTILLA_ASSIGN(unk_token, GetOptionalString(json, path, "unk_token"));
    FLOTILLA_ASSIGN(prefix, GetOptionalString(json, path, "continuing_subword_prefix"));
    FLOTILLA_ASSIGN(suffix, GetOptionalString(json, path, "end_of_word_suffix"));
    FLOTILLA_ASSIGN(fuse_unk, GetBool(json, path, "fuse_unk", false));
    FLOTILLA_ASSIGN(byte_fallback, GetBool(json, path, "byte_fallback", false));
    FLOTILLA_ASSIGN(ignore_merges, GetBool(json, path, "ignore_merges", false));
    if (auto dropout = json.find("dropout"); dropout != json.end() && !dropout->is_null() &&
                                              dropout->is_number() && dropout->get<double>() > 0) {
      return absl::UnimplementedError(absl::StrCat(path, ".dropout: BPE dropout is random and not supported; expected null but got ", dropout->dump()));
    }
    model->unk_token_ = unk_token;
    model->prefix_ = prefix.value_or("");
    model->has_prefix_ = prefix.has_value() && !prefix->empty();
    model->suffix_ = suffix.value_or("");
    model->has_suffix_ = suffix.has_value() && !suffix->empty();
    model->fuse_unk_ = fuse_unk;
    model->byte_fallback_ = byte_fallback;
    model->ignore_merges_ = ignore_merges;
    if (byte_fallback) {
      for (int b = 0; b < 256; ++b) {
        auto found = model->vocabulary_.find(absl::StrFormat("<0x%02X>", b));
        model->byte_ids_[b] = found == model->vocabulary_.end() ? -1 : static_cast<int64_t>(found->second);
      }
    }
    auto merges = json.find("merges");
    if (merges == json.end() || !merges->is_array()) {
      return FieldError(path, "merges", "an array", json.value("merges", Json()));
    }
    model->merges_.reserve(merges->size());
    const size_t prefix_length = model->prefix_.size();
    for (size_t rank = 0; rank < merges->size(); ++rank) {
      const Json& merge = (*merges)[rank];
      std::string left, right;
      if (merge.is_string()) {
        std::string text = merge.get<std::string>();
        size_t space = text.find(' ');
        if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(path, ".merges[", rank, "]: expected \"left right\" but got \"", text, "\""));
        }
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ".merges[", rank, "]: expected \"left right\" or [left, right] but got ", merge.dump().substr(0, 80)));
      }
      auto left_id = model->vocabulary_.find(left);
      auto right_id = model->vocabulary_.find(right);
      if (left_id == model->vocabulary_.end() || right_id == model->vocabulary_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ".merges[", rank, "]: token \"", left_id == model->vocabulary_.end() ? left : right, "\" is not in the vocabulary"));
      }
      std::string merged = left + (right.size() >= prefix_length ? right.substr(prefix_length) : right);
      auto merged_id = model->vocabulary_.find(merged);
      if (merged_id == model->vocabulary_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ".merges[", rank, "]: merged token \"", merged, "\" is not in the vocabulary"));
      }
      model->merges_.try_emplace(PairKey(left_id->second, right_id->second),
                                 MergeInfo{static_cast<uint32_t>(rank), merged_id->second});
    }
    return model;
  }

  absl::Status Tokenize(std::string_view sequence, std::vector<Token>& tokens) const override {
    if (sequence.empty()) return absl::OkStatus();
    if (ignore_merges_) {
      if (auto found = vocabulary_.find(sequence); found != vocabulary_.end()) {
        tokens.push_back(Token{found->second, std::string(sequence), {0, static_cast<uint32_t>(sequence.size())}});
        return absl::OkStatus();
      }
    }
    thread_local std::vector<Symbol> symbols;
    symbols.clear();
    const bool cacheable = sequence.size() < kMaxCachedLength;
    CacheShard* shard = nullptr;
    size_t hash = 0;
    if (cacheable) {
      hash = StringViewHash()(sequence);
      shard = &cache_[hash % kCacheShards];
      std::lock_guard<std::mutex> lock(shard->mutex);
      if (auto hit = shard->words.find(sequence); hit != shard->words.end()) {
        symbols = hit->second;
      }
    }
    if (symbols.empty()) {
      absl::Status status = MergeWord(sequence, symbols);
      if (!status.ok()) return status;
      if (cacheable) {
        std::lock_guard<std::mutex> lock(shard->mutex);
        if (shard->words.size() >= kCacheCapacityPerShard) shard->words.clear();
        shard->words.emplace(std::string(sequence), symbols);
      }
    }
    uint32_t offset = 0;
    for (const Symbol& symbol : symbols) {
      tokens.push_back(Token{symbol.id, reverse_[symbol.id], {offset, offset + symbol.length}});
      offset += symbol.length;
    }
    return absl::OkStatus();
  }

  std::optional<uint32_t> TokenToId(std::string_view token) const override {
    auto found = vocabulary_.find(token);
    if (found == vocabulary_.end()) return std::nullopt;
    return found->second;
  }
  const std::string* IdToToken(uint32_t id) const override {
    return id < reverse_.size() ? &reverse_[id] : nullptr;
  }
  size_t VocabSize() const override { return vocabulary_.size(); }

 private:
  struct Symbol {
    uint32_t id;
    uint32_t length;  // bytes of the piece
  };
  struct MergeInfo {
    uint32_t rank;
    uint32_t new_id;
  };
  static constexpr size_t kMaxCachedLength = 256;
  static constexpr size_t kCacheShards = 64;
  static constexpr size_t kCacheCapacityPerShard = 4096;
  struct CacheShard {
    std::mutex mutex;
    absl::flat_hash_map<std::string, std::vector<Symbol>, StringViewHash, StringViewEqual> words;
  };

  BpeModel() : cache_(kCacheShards) { byte_ids_.fill(-1); }
  static uint64_t PairKey(uint32_t left, uint32_t right) {
    return (static_cast<uint64_t>(left) << 32) | right;
  }

  absl::Status MergeWord(std::string_view word, std::vector<Symbol>& symbols) const {
    // Initial symbols: one per character (with prefix/suffix), byte fallback or unk as configured.
    std::optional<Symbol> unknown;
    std::string piece;
    size_t position = 0;
    while (position < word.size()) {
      size_t start = position;
      position += Utf8Length(static_cast<unsigned char>(word[position]));
      if (position > word.size()) position = word.size();
      const auto byte_length = static_cast<uint32_t>(position - start);
      std::string_view character = word.substr(start, byte_length);
      std::string_view lookup = character;
      if ((has_prefix_ && start != 0) || (has_suffix_ && position == word.size())) {
        piece.clear();
        if (has_prefix_ && start != 0) piece += prefix_;
        piece += character;
        if (has_suffix_ && position == word.size()) piece += suffix_;
        lookup = piece;
      }
      if (auto found = vocabulary_.find(lookup); found != vocabulary_.end()) {
        if (unknown) {
          symbols.push_back(*unknown);
          unknown.reset();
        }
        symbols.push_back(Symbol{found->second, byte_length});
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (char byte : lookup) all &= byte_ids_[static_cast<uint8_t>(byte)] >= 0;
        if (all) {
          // tokenizers adds the pending unknown only before a vocabulary hit; byte tokens come first.
          for (char byte : lookup) {
            symbols.push_back(Symbol{static_cast<uint32_t>(byte_ids_[static_cast<uint8_t>(byte)]), 1});
          }
          continue;
        }
      }
      if (unk_token_) {
        auto unk_id = vocabulary_.find(*unk_token_);
        if (unk_id == vocabulary_.end()) {
          return absl::FailedPreconditionError(absl::StrCat("BPE.Tokenize: unk_token \"", *unk_token_, "\" is not in the vocabulary"));
        }
        if (unknown && fuse_unk_) {
          unknown->length += byte_length;
        } else {
          if (unknown) symbols.push_back(*unknown);
          unknown = Symbol{unk_id->second, byte_length};
        }
      }
    }
    if (unknown) symbols.push_back(*unknown);
    MergeAll(symbols);
    return absl::OkStatus();
  }

  // Applies merges lowest rank first, leftmost first among equal ranks.
  void MergeAll(std::vector<Symbol>& symbols) const {
    if (symbols.size() < 2) return;
    if (symbols.size() <= 48) {
      // Short words: a linear scan per merge beats a heap.
      while (symbols.size() > 1) {
        uint32_t best_rank = std::numeric_limits<uint32_t>::max();
        size_t best_index = 0;
        uint32_t best_id = 0;
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
          auto found = merges_.find(PairKey(symbols[i].id, symbols[i + 1].id));
          if (found != merges_.end() && found->second.rank < best_rank) {
            best_rank = found->second.rank;
            best_index = i;
            best_id = found->second.new_id;
          }
        }
        if (best_rank == std::numeric_limits<uint32_t>::max()) break;
        symbols[best_index].id = best_id;
        symbols[best_index].length += symbols[best_index + 1].length;
        symbols.erase(symbols.begin() + best_index + 1);
      }
      return;
    }
    // Long words: a heap of candidate merges over a linked list of symbols.
    struct Node {
      uint32_t id, length;
      int64_t previous, next;
    };
    std::vector<Node> nodes(symbols.size());
    for (size_t i = 0; i < symbols.size(); ++i) {
      nodes[i] = Node{symbols[i].id, symbols[i].length, static_cast<int64_t>(i) - 1,
                      i + 1 < symbols.size() ? static_cast<int64_t>(i + 1) : -1};
    }
    struct Candidate {
      uint32_t rank;
      size_t position;
      uint32_t new_id;
      bool operator>(const Candidate& other) const {
        return rank != other.rank ? rank > other.rank : position > other.position;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    for (size_t i = 0; i + 1 < nodes.size(); ++i) {
      auto found = merges_.find(PairKey(nodes[i].id, nodes[i + 1].id));
      if (found != merges_.end()) queue.push({found->second.rank, i, found->second.new_id});
    }
    while (!queue.empty()) {
      Candidate top = queue.top();
      queue.pop();
      Node& current = nodes[top.position];
      if (current.length == 0 || current.next < 0) continue;
      Node right = nodes[current.next];
      auto found = merges_.find(PairKey(current.id, right.id));
      if (found == merges_.end() || found->second.new_id != top.new_id) continue;
      int64_t right_position = current.next;
      current.id = top.new_id;
      current.length += right.length;
      current.next = right.next;
      nodes[right_position].length = 0;
      if (right.next >= 0) nodes[right.next].previous = static_cast<int64_t>(top.position);
      if (current.previous >= 0) {
        auto merge = merges_.find(PairKey(nodes[current.previous].id, current.id));
        if (merge != merges_.end()) {
          queue.push({merge->second.rank, static_cast<size_t>(current.previous), merge->second.new_id});
        }
      }
      if (current.next >= 0) {
        auto merge = merges_.find(PairKey(current.id, nodes[current.next].id));
        if (merge != merges_.end()) queue.push({merge->second.rank, top.position, merge->second.new_id});
      }
    }
    symbols.clear();
    for (const Node& node : nodes) {
      if (node.length != 0) symbols.push_back(Symbol{node.id, node.length});
    }
  }

  Vocabulary vocabulary_;
  std::vector<std::string> reverse_;
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  std::optional<std::string> unk_token_;
  std::string prefix_, suffix_;
  bool has_prefix_ = false, has_suffix_ = false;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::array<int64_t, 256> byte_ids_;
  mutable std::vector<CacheShard> cache_;
};

class WordPieceModel : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<WordPieceModel>> Create(const Json& json, const std::string& path) {
    auto model = std::unique_ptr<WordPieceModel>(new WordPieceModel());
    FLOTILLA_ASSIGN(vocabulary, GetVocabulary(json, path, model->reverse_));
    model->vocabulary_ = std::move(vocabulary);
    FLOTILLA_ASSIGN(unk_token, GetString(json, path, "unk_token", "[UNK]"));
    FLOTILLA_ASSIGN(prefix, GetString(json, path, "continuing_subword_prefix", "##"));
    FLOTILLA_ASSIGN(max_chars, GetUnsigned(json, path, "max_input_chars_per_word", 100));
    model->unk_token_ = unk_token;
    model->prefix_ = prefix;
    model->max_input_chars_per_word_ = max_chars;
    return model;
  }

  absl::Status Tokenize(std::string_view sequence, std::vector<Token>& tokens) const override {
    size_t characters = 0;
    for (char c : sequence) characters += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    auto unknown = [&]() -> absl::Status {
      auto found = vocabulary_.find(unk_token_);
      if (found == vocabulary_.end()) {
        return absl::FailedPreconditionError(absl::StrCat("WordPiece.Tokenize: unk_token \"", unk_token_, "\" is not in the vocabulary"));
      }
      tokens.push_back(Token{found->second, unk_token_, {0, static_cast<uint32_t>(sequence.size())}});
      return absl::OkStatus();
    };
    if (characters > max_input_chars_per_word_) return unknown();
    size_t first_token = tokens.size();
    size_t start = 0;
    std::string candidate;
    while (start < sequence.size()) {
      size_t end = sequence.size();
      bool found_piece = false;
      while (start < end) {
        std::string_view lookup = sequence.substr(start, end - start);
        if (start > 0) {
          candidate.assign(prefix_);
          candidate.append(lookup);
          lookup = candidate;
        }
        if (auto found = vocabulary_.find(lookup); found != vocabulary_.end()) {
          tokens.push_back(Token{found->second, std::string(lookup), {static_cast<uint32_t>(start), static_cast<uint32_t>(end)}});
          found_piece = true;
          break;
        }
        // Step back one character.
        size_t last = end - 1;
        while (last > start && (static_cast<unsigned char>(sequence[last]) & 0xC0) == 0x80) --last;
        end = last;
      }
      if (!found_piece) {
        tokens.resize(first_token);
        return unknown();
      }
      start = end;
    }
    return absl::OkStatus();
  }

  std::optional<uint32_t> TokenToId(std::string_view token) const override {
    auto found = vocabulary_.find(token);
    if (found == vocabulary_.end()) return std::nullopt;
    return found->second;
  }
  const std::string* IdToToken(uint32_t id) const override {
    return id < reverse_.size() ? &reverse_[id] : nullptr;
  }
  size_t VocabSize() const override { return vocabulary_.size(); }

 private:
  Vocabulary vocabulary_;
  std::vector<std::string> reverse_;
  std::string unk_token_, prefix_;
  size_t max_input_chars_per_word_ = 100;
};

class WordLevelModel : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<WordLevelModel>> Create(const Json& json, const std::string& path) {
    auto model = std::unique_ptr<WordLevelModel>(new WordLevelModel());
    FLOTILLA_ASSIGN(vocabulary, GetVocabulary(json, path, model->reverse_));
    model->vocabulary_ = std::move(vocabulary);
    FLOTILLA_ASSIGN(unk_token, GetString(json, path, "unk_token", "<unk>"));
    model->unk_token_ = unk_token;
    return model;
  }
  absl::Status Tokenize(std::string_view sequence, std::vector<Token>& tokens) const override {
    auto found = vocabulary_.find(sequence);
    const Offsets offsets{0, static_cast<uint32_t>(sequence.size())};
    if (found != vocabulary_.end()) {
      tokens.push_back(Token{found->second, std::string(sequence), offsets});
      return absl::OkStatus();
    }
    auto unknown = vocabulary_.find(unk_token_);
    if (unknown == vocabulary_.end()) {
      return absl::FailedPreconditionError(absl::StrCat("WordLevel.Tokenize: \"", std::string(sequence), "\" is not in the vocabulary and unk_token \"", unk_token_, "\" is missing too"));
    }
    tokens.push_back(Token{unknown->second, unk_token_, offsets});
    return absl::OkStatus();
  }
  std::optional<uint32_t> TokenToId(std::string_view token) const override {
    auto found = vocabulary_.find(token);
    if (found == vocabulary_.end()) return std::nullopt;
    return found->second;
  }
  const std::string* IdToToken(uint32_t id) const override {
    return id < reverse_.size() ? &reverse_[id] : nullptr;
  }
  size_t VocabSize() const override { return vocabulary_.size(); }

 private:
  Vocabulary vocabulary_;
  std::vector<std::string> reverse_;
  std::string unk_token_;
};

class UnigramModel : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<UnigramModel>> Create(const Json& json, const std::string& path) {
    auto model = std::unique_ptr<UnigramModel>(new UnigramModel());
    auto vocab = json.find("vocab");
    if (vocab == json.end() || !vocab->is_array()) {
      return FieldError(path, "vocab", "an array of [piece, score]", json.value("vocab", Json()));
    }
    model->pieces_.reserve(vocab->size());
    model->scores_.reserve(vocab->size());
    model->min_score_ = std::numeric_limits<double>::infinity();
    for (size_t id = 0; id < vocab->size(); ++id) {
      const Json& entry = (*vocab)[id];
      if (!entry.is_array() || entry.size() != 2 || !entry[0].is_string() || !entry[1].is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ".vocab[", id, "]: expected [piece, score] but got ", entry.dump().substr(0, 80)));
      }
      std::string piece = entry[0].get<std::string>();
      double score = entry[1].get<double>();
      model->pieces_.push_back(piece);
      model->scores_.push_back(score);
      model->min_score_ = std::min(model->min_score_, score);
      model->vocabulary_.try_emplace(piece, static_cast<uint32_t>(id));
      model->trie_.Insert(piece, static_cast<uint32_t>(id));
    }
    if (auto unk_id = json.find("unk_id"); unk_id != json.end() && !unk_id->is_null()) {
      if (!unk_id->is_number_unsigned() || unk_id->get<uint64_t>() >= vocab->size()) {
        return FieldError(path, "unk_id", absl::StrCat("an id below ", vocab->size()), *unk_id);
      }
      model->unk_id_ = unk_id->get<uint32_t>();
    }
    FLOTILLA_ASSIGN(byte_fallback, GetBool(json, path, "byte_fallback", false));
    model->byte_fallback_ = byte_fallback;
    return model;
  }

  absl::Status Tokenize(std::string_view sequence, std::vector<Token>& tokens) const override {
    if (sequence.empty()) return absl::OkStatus();
    // Viterbi over byte positions (tokenizers' encode_optimized).
    struct Best {
      double score = 0;
      int64_t starts_at = -1;
      uint32_t id = 0;
    };
    constexpr double kUnknownPenalty = 10.0;
    const double unknown_score = min_score_ - kUnknownPenalty;
    std::vector<Best> best(sequence.size() + 1);
    size_t starts_at = 0;
    while (starts_at < sequence.size()) {
      const double score_so_far = best[starts_at].score;
      const size_t character_length = std::min<size_t>(Utf8Length(static_cast<unsigned char>(sequence[starts_at])), sequence.size() - starts_at);
      bool has_single_node = false;
      trie_.ForEachPrefix(sequence.substr(starts_at), [&](size_t length, uint32_t id) {
        size_t key_position = starts_at + length;
        double candidate = scores_[id] + score_so_far;
        Best& target = best[key_position];
        if (target.starts_at < 0 || candidate > target.score) {
          target = Best{candidate, static_cast<int64_t>(starts_at), id};
        }
        if (length == character_length) has_single_node = true;
      });
      if (!has_single_node) {
        if (!unk_id_) {
          return absl::FailedPreconditionError("Unigram.Tokenize: the text needs an unknown token but the model has no unk_id");
        }
        Best& target = best[starts_at + character_length];
        double candidate = unknown_score + score_so_far;
        if (target.starts_at < 0 || candidate > target.score) {
          target = Best{candidate, static_cast<int64_t>(starts_at), *unk_id_};
        }
      }
      starts_at += character_length;
    }
    // Walk back; consecutive unknowns fuse (fuse_unk is always on for Unigram).
    std::vector<std::pair<size_t, size_t>> pieces;  // [start, end)
    size_t ends_at = sequence.size();
    std::optional<std::pair<size_t, size_t>> unknown_run;
    while (ends_at > 0) {
      const Best& node = best[ends_at];
      size_t start = static_cast<size_t>(node.starts_at);
      if (unk_id_ && node.id == *unk_id_) {
        unknown_run = unknown_run ? std::make_pair(start, unknown_run->second) : std::make_pair(start, ends_at);
      } else {
        if (unknown_run) {
          pieces.push_back(*unknown_run);
          unknown_run.reset();
        }
        pieces.emplace_back(start, ends_at);
      }
      ends_at = start;
    }
    if (unknown_run) pieces.push_back(*unknown_run);
    std::reverse(pieces.begin(), pieces.end());
    for (const auto& [start, end] : pieces) {
      std::string_view piece = sequence.substr(start, end - start);
      const Offsets offsets{static_cast<uint32_t>(start), static_cast<uint32_t>(end)};
      auto found = vocabulary_.find(piece);
      if (found != vocabulary_.end()) {
        tokens.push_back(Token{found->second, std::string(piece), offsets});
        continue;
      }
      if (byte_fallback_) {
        std::vector<Token> byte_tokens;
        bool all = true;
        for (char byte : piece) {
          std::string name = absl::StrFormat("<0x%02X>", static_cast<uint8_t>(byte));
          auto byte_id = vocabulary_.find(name);
          if (byte_id == vocabulary_.end()) {
            all = false;
            break;
          }
          byte_tokens.push_back(Token{byte_id->second, name, offsets});
        }
        if (all) {
          for (auto& token : byte_tokens) tokens.push_back(std::move(token));
          continue;
        }
      }
      if (!unk_id_) return absl::FailedPreconditionError("Unigram.Tokenize: unknown piece and no unk_id");
      tokens.push_back(Token{*unk_id_, std::string(piece), offsets});
    }
    return absl::OkStatus();
  }

  std::optional<uint32_t> TokenToId(std::string_view token) const override {
    auto found = vocabulary_.find(token);
    if (found == vocabulary_.end()) return std::nullopt;
    return found->second;
  }
  const std::string* IdToToken(uint32_t id) const override {
    return id < pieces_.size() ? &pieces_[id] : nullptr;
  }
  size_t VocabSize() const override { return pieces_.size(); }

 private:
  // A byte trie over the pieces; children in a hash map keyed by (node, byte).
  class Trie {
   public:
    Trie() { nodes_.push_back(-1); }
    void Insert(std::string_view key, uint32_t id) {
      uint32_t node = 0;
      for (char byte : key) {
        uint64_t edge = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(byte);
        auto found = children_.find(edge);
        if (found == children_.end()) {
          uint32_t child = static_cast<uint32_t>(nodes_.size());
          nodes_.push_back(-1);
          children_.emplace(edge, child);
          node = child;
        } else {
          node = found->second;
        }
      }
      if (nodes_[node] < 0) nodes_[node] = id;
    }
    template <typename Callback>
    void ForEachPrefix(std::string_view text, Callback&& callback) const {
      uint32_t node = 0;
      for (size_t i = 0; i < text.size(); ++i) {
        uint64_t edge = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[i]);
        auto found = children_.find(edge);
        if (found == children_.end()) return;
        node = found->second;
        if (nodes_[node] >= 0) callback(i + 1, static_cast<uint32_t>(nodes_[node]));
      }
    }

   private:
    std::vector<int64_t> nodes_;  // id of the piece ending here, -1 for none
    absl::flat_hash_map<uint64_t, uint32_t> children_;
  };

  std::vector<std::string> pieces_;
  std::vector<double> scores_;
  Vocabulary vocabulary_;
  Trie trie_;
  double min_score_ = 0;
  std::optional<uint32_t> unk_id_;
  bool byte_fallback_ = false;
};

// ---------------------------------------------------------------------------------------------
// Post-processors

Encoding SpecialEncoding(const std::vector<uint32_t>& ids, const std::vector<std::string>& tokens,
                         uint32_t type_id) {
  Encoding encoding;
  for (size_t i = 0; i < ids.size(); ++i) encoding.Push(ids[i], tokens[i], {0, 0}, -1, type_id, 1);
  return encoding;
}

class TemplateProcessor : public PostProcessor {
 public:
  struct Piece {
    bool is_sequence;
    std::string id;  // "A"/"B" or the special token name
    uint32_t type_id;
  };
  struct SpecialToken {
    std::vector<uint32_t> ids;
    std::vector<std::string> tokens;
  };

  static absl::StatusOr<std::unique_ptr<TemplateProcessor>> Create(const Json& json, const std::string& path) {
    auto processor = std::unique_ptr<TemplateProcessor>(new TemplateProcessor());
    auto specials = json.find("special_tokens");
    if (specials != json.end() && specials->is_object()) {
      for (auto it = specials->begin(); it != specials->end(); ++it) {
        const Json& value = it.value();
        SpecialToken special;
        if (!value.contains("ids") || !value["ids"].is_array() || !value.contains("tokens") || !value["tokens"].is_array() ||
            value["ids"].size() != value["tokens"].size()) {
          return absl::InvalidArgumentError(absl::StrCat(path, ".special_tokens[\"", it.key(), "\"]: expected ids and tokens of equal length"));
        }
        for (const auto& id : value["ids"]) special.ids.push_back(id.get<uint32_t>());
        for (const auto& token : value["tokens"]) special.tokens.push_back(token.get<std::string>());
        processor->special_tokens_[it.key()] = std::move(special);
      }
    }
    for (const char* key : {"single", "pair"}) {
      auto pieces = json.find(key);
      if (pieces == json.end() || !pieces->is_array()) return FieldError(path, key, "an array of template pieces", json.value(key, Json()));
      std::vector<Piece>& target = std::string(key) == "single" ? processor->single_ : processor->pair_;
      for (size_t i = 0; i < pieces->size(); ++i) {
        const Json& piece = (*pieces)[i];
        std::string piece_path = absl::StrCat(path, ".", key, "[", i, "]");
        if (piece.contains("Sequence")) {
          const Json& sequence = piece["Sequence"];
          target.push_back(Piece{true, sequence.value("id", "A"), sequence.value("type_id", 0u)});
        } else if (piece.contains("SpecialToken")) {
          const Json& special = piece["SpecialToken"];
          std::string id = special.value("id", "");
          if (!processor->special_tokens_.contains(id)) {
            return absl::InvalidArgumentError(absl::StrCat(piece_path, ": special token \"", id, "\" is missing from special_tokens"));
          }
          target.push_back(Piece{false, id, special.value("type_id", 0u)});
        } else {
          return absl::InvalidArgumentError(absl::StrCat(piece_path, ": expected {\"Sequence\": ...} or {\"SpecialToken\": ...} but got ", piece.dump().substr(0, 80)));
        }
      }
    }
    return processor;
  }

  size_t AddedTokens(bool is_pair) const override {
    size_t count = 0;
    for (const Piece& piece : is_pair ? pair_ : single_) {
      if (!piece.is_sequence) count += special_tokens_.at(piece.id).ids.size();
    }
    return count;
  }

  absl::Status ProcessEncodings(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    const std::vector<Piece>& pieces = encodings.size() > 1 ? pair_ : single_;
    Encoding result;
    for (const Piece& piece : pieces) {
      if (piece.is_sequence) {
        size_t index = piece.id == "A" ? 0 : 1;
        if (index >= encodings.size()) continue;
        Encoding& encoding = encodings[index];
        std::fill(encoding.type_ids.begin(), encoding.type_ids.end(), piece.type_id);
        result.Append(encoding);
      } else if (add_special_tokens) {
        const SpecialToken& special = special_tokens_.at(piece.id);
        result.Append(SpecialEncoding(special.ids, special.tokens, piece.type_id));
      }
    }
    encodings.clear();
    encodings.push_back(std::move(result));
    return absl::OkStatus();
  }

 private:
  std::vector<Piece> single_, pair_;
  absl::flat_hash_map<std::string, SpecialToken> special_tokens_;
};

class BertProcessor : public PostProcessor {
 public:
  BertProcessor(std::pair<std::string, uint32_t> separator, std::pair<std::string, uint32_t> classifier)
      : separator_(std::move(separator)), classifier_(std::move(classifier)) {}
  size_t AddedTokens(bool is_pair) const override { return is_pair ? 3 : 2; }
  absl::Status ProcessEncodings(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    if (!add_special_tokens) return absl::OkStatus();
    for (size_t i = 0; i < encodings.size(); ++i) {
      Encoding result;
      uint32_t type_id = i == 0 ? 0 : 1;
      if (i == 0) result.Push(classifier_.second, classifier_.first, {0, 0}, -1, 0, 1);
      std::fill(encodings[i].type_ids.begin(), encodings[i].type_ids.end(), type_id);
      result.Append(encodings[i]);
      result.Push(separator_.second, separator_.first, {0, 0}, -1, type_id, 1);
      encodings[i] = std::move(result);
    }
    return absl::OkStatus();
  }

 private:
  std::pair<std::string, uint32_t> separator_, classifier_;
};

class RobertaProcessor : public PostProcessor {
 public:
  RobertaProcessor(std::pair<std::string, uint32_t> separator, std::pair<std::string, uint32_t> classifier,
                   bool trim_offsets, bool add_prefix_space)
      : separator_(std::move(separator)), classifier_(std::move(classifier)),
        trim_offsets_(trim_offsets), add_prefix_space_(add_prefix_space) {}
  size_t AddedTokens(bool is_pair) const override { return is_pair ? 4 : 2; }
  absl::Status ProcessEncodings(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    if (trim_offsets_) {
      for (auto& encoding : encodings) TrimByteLevelOffsets(encoding, add_prefix_space_);
    }
    if (!add_special_tokens) return absl::OkStatus();
    for (size_t i = 0; i < encodings.size(); ++i) {
      Encoding result;
      if (i == 0) {
        result.Push(classifier_.second, classifier_.first, {0, 0}, -1, 0, 1);
      } else {
        result.Push(separator_.second, separator_.first, {0, 0}, -1, 0, 1);
      }
      std::fill(encodings[i].type_ids.begin(), encodings[i].type_ids.end(), 0);
      result.Append(encodings[i]);
      result.Push(separator_.second, separator_.first, {0, 0}, -1, 0, 1);
      encodings[i] = std::move(result);
    }
    return absl::OkStatus();
  }

 private:
  std::pair<std::string, uint32_t> separator_, classifier_;
  bool trim_offsets_, add_prefix_space_;
};

class ByteLevelProcessor : public PostProcessor {
 public:
  ByteLevelProcessor(bool trim_offsets, bool add_prefix_space)
      : trim_offsets_(trim_offsets), add_prefix_space_(add_prefix_space) {}
  size_t AddedTokens(bool) const override { return 0; }
  absl::Status ProcessEncodings(std::vector<Encoding>& encodings, bool) const override {
    if (trim_offsets_) {
      for (auto& encoding : encodings) TrimByteLevelOffsets(encoding, add_prefix_space_);
    }
    return absl::OkStatus();
  }

 private:
  bool trim_offsets_, add_prefix_space_;
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> processors)
      : processors_(std::move(processors)) {}
  size_t AddedTokens(bool is_pair) const override {
    size_t count = 0;
    for (const auto& processor : processors_) count += processor->AddedTokens(is_pair);
    return count;
  }
  absl::Status ProcessEncodings(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    for (const auto& processor : processors_) {
      absl::Status status = processor->ProcessEncodings(encodings, add_special_tokens);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> processors_;
};

absl::StatusOr<std::pair<std::string, uint32_t>> GetTokenPair(const Json& json, const std::string& path, const char* key) {
  auto it = json.find(key);
  if (it == json.end() || !it->is_array() || it->size() != 2 || !(*it)[0].is_string() || !(*it)[1].is_number_unsigned()) {
    return FieldError(path, key, "[token, id]", json.value(key, Json()));
  }
  return std::make_pair((*it)[0].get<std::string>(), (*it)[1].get<uint32_t>());
}

// ---------------------------------------------------------------------------------------------
// Decoders

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> decoders) : decoders_(std::move(decoders)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (const auto& decoder : decoders_) decoder->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> decoders_;
};

class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      size_t mark = bytes.size();
      size_t position = 0;
      bool all = true;
      while (position < token.size()) {
        int byte = ByteLevelByte(DecodeUtf8(token, position));
        if (byte < 0) {
          all = false;
          break;
        }
        bytes.push_back(static_cast<char>(byte));
      }
      if (!all) {
        bytes.resize(mark);
        bytes.append(token);
      }
    }
    tokens.assign(1, Utf8Lossy(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme) : replacement_(replacement), scheme_(scheme) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string decoded;
      const std::string& token = tokens[i];
      size_t position = 0;
      while (position < token.size()) {
        size_t start = position;
        char32_t c = DecodeUtf8(token, position);
        if (c == replacement_) {
          if (i == 0 && scheme_ != PrependScheme::kNever) continue;
          decoded.push_back(' ');
        } else {
          decoded.append(token, start, position - start);
        }
      }
      tokens[i] = std::move(decoded);
    }
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

class WordPieceDecoder : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& token = tokens[i];
      if (i != 0) {
        if (!prefix_.empty() && token.rfind(prefix_, 0) == 0) {
          token.erase(0, prefix_.size());
        } else {
          token.insert(0, " ");
        }
      }
      if (cleanup_) token = Cleanup(token);
    }
  }
  static std::string Cleanup(const std::string& text) {
    return absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(
        absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(absl::StrReplaceAll(text,
        {{" .", "."}}), {{" ?", "?"}}), {{" !", "!"}}), {{" ,", ","}}), {{" ' ", "'"}}), {{" n't", "n't"}}),
        {{" 'm", "'m"}}), {{" do not", " don't"}}), {{" 's", "'s"}}), {{" 've", "'ve"}}), {{" 're", "'re"}});
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class BpeDecoder : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    if (suffix_.empty()) return;
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = absl::StrReplaceAll(tokens[i], {{suffix_, i + 1 == tokens.size() ? "" : " "}});
    }
  }

 private:
  std::string suffix_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> output;
    output.reserve(tokens.size());
    std::string pending;
    size_t pending_count = 0;
    auto flush = [&]() {
      if (pending_count == 0) return;
      if (FindInvalidUtf8(pending) == std::string::npos) {
        output.push_back(pending);
      } else {
        for (size_t i = 0; i < pending_count; ++i) output.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
      pending_count = 0;
    };
    for (std::string& token : tokens) {
      int byte = -1;
      if (token.size() == 6 && token.rfind("<0x", 0) == 0 && token.back() == '>') {
        auto hex = [](char c) -> int {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        int high = hex(token[3]), low = hex(token[4]);
        if (high >= 0 && low >= 0) byte = high * 16 + low;
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
        ++pending_count;
      } else {
        flush();
        output.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(output);
  }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    tokens.assign(1, absl::StrJoin(tokens, ""));
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::vector<std::pair<size_t, char32_t>> characters;  // (byte start, character)
      size_t position = 0;
      while (position < token.size()) {
        size_t start = position;
        characters.emplace_back(start, DecodeUtf8(token, position));
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, characters.size()); ++i) {
        if (characters[i].second == content_) {
          start_cut = i + 1;
        } else {
          break;
        }
      }
      size_t stop_cut = characters.size();
      for (size_t i = 0; i < stop_ && i < characters.size(); ++i) {
        size_t index = characters.size() - i - 1;
        if (characters[index].second == content_) {
          stop_cut = index;
        } else {
          break;
        }
      }
      if (stop_cut < start_cut) stop_cut = start_cut;
      size_t begin = start_cut < characters.size() ? characters[start_cut].first : token.size();
      size_t end = stop_cut < characters.size() ? characters[stop_cut].first : token.size();
      token = token.substr(begin, end - begin);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::shared_ptr<const Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::vector<PatternMatch> matches;
    for (std::string& token : tokens) {
      matches.clear();
      pattern_->FindMatches(token, matches);
      std::string output;
      for (const auto& match : matches) {
        if (match.is_match) {
          output.append(content_);
        } else {
          output.append(token, match.start, match.end - match.start);
        }
      }
      token = std::move(output);
    }
  }

 private:
  std::shared_ptr<const Pattern> pattern_;
  std::string content_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public pieces

void Encoding::Append(const Encoding& other) {
  ids.insert(ids.end(), other.ids.begin(), other.ids.end());
  type_ids.insert(type_ids.end(), other.type_ids.begin(), other.type_ids.end());
  tokens.insert(tokens.end(), other.tokens.begin(), other.tokens.end());
  offsets.insert(offsets.end(), other.offsets.begin(), other.offsets.end());
  word_ids.insert(word_ids.end(), other.word_ids.begin(), other.word_ids.end());
  special_tokens_mask.insert(special_tokens_mask.end(), other.special_tokens_mask.begin(), other.special_tokens_mask.end());
  attention_mask.insert(attention_mask.end(), other.attention_mask.begin(), other.attention_mask.end());
}

void Encoding::Push(uint32_t id, std::string token, Offsets token_offsets, int32_t word,
                    uint32_t type_id, uint32_t special) {
  ids.push_back(id);
  type_ids.push_back(type_id);
  tokens.push_back(std::move(token));
  offsets.push_back(token_offsets);
  word_ids.push_back(word);
  special_tokens_mask.push_back(special);
  attention_mask.push_back(1);
}

const std::string& ByteLevelCharacter(uint8_t byte) { return Table().characters[byte]; }

int ByteLevelByte(char32_t character) {
  const auto& bytes = Table().bytes;
  auto found = bytes.find(character);
  return found == bytes.end() ? -1 : found->second;
}

void TrimByteLevelOffsets(Encoding& encoding, bool add_prefix_space) {
  for (size_t i = 0; i < encoding.size(); ++i) {
    const std::string& token = encoding.tokens[i];
    Offsets& offsets = encoding.offsets[i];
    std::vector<char32_t> characters;
    size_t position = 0;
    while (position < token.size()) characters.push_back(DecodeUtf8(token, position));
    auto is_space = [](char32_t c) { return c == 0x120 || IsWhitespace(c); };
    size_t leading = 0, trailing = 0;
    while (leading < characters.size() && is_space(characters[leading])) ++leading;
    while (trailing < characters.size() && is_space(characters[characters.size() - 1 - trailing])) ++trailing;
    if (leading == 0 && trailing == 0) continue;
    if (leading > 0) {
      bool is_first = i == 0 || offsets.start == 0;
      if (is_first && add_prefix_space && leading == 1) leading = 0;
      offsets.start = std::min<uint32_t>(offsets.start + leading, offsets.end);
    }
    if (trailing > 0 && offsets.end >= trailing) {
      offsets.end = std::max<uint32_t>(offsets.end - trailing, offsets.start);
    }
  }
}

absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const Json& json, const std::string& path) {
  FLOTILLA_ASSIGN(type, GetType(json, path));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> normalizers;
    auto list = json.find("normalizers");
    if (list == json.end() || !list->is_array()) return FieldError(path, "normalizers", "an array", json.value("normalizers", Json()));
    for (size_t i = 0; i < list->size(); ++i) {
      FLOTILLA_ASSIGN(normalizer, NormalizerFromJson((*list)[i], absl::StrCat(path, ".normalizers[", i, "]")));
      normalizers.push_back(std::move(normalizer));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(normalizers)));
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(type));
  }
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "StripAccents") return std::unique_ptr<Normalizer>(new StripAccentsNormalizer());
  if (type == "Strip") {
    FLOTILLA_ASSIGN(left, GetBool(json, path, "strip_left", true));
    FLOTILLA_ASSIGN(right, GetBool(json, path, "strip_right", true));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  if (type == "Replace") {
    FLOTILLA_ASSIGN(pattern, GetPattern(json, path, "pattern"));
    FLOTILLA_ASSIGN(content, GetString(json, path, "content"));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(pattern, content));
  }
  if (type == "Prepend") {
    FLOTILLA_ASSIGN(prepend, GetString(json, path, "prepend"));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(prepend));
  }
  if (type == "BertNormalizer") {
    FLOTILLA_ASSIGN(clean_text, GetBool(json, path, "clean_text", true));
    FLOTILLA_ASSIGN(chinese, GetBool(json, path, "handle_chinese_chars", true));
    FLOTILLA_ASSIGN(lowercase, GetBool(json, path, "lowercase", true));
    FLOTILLA_ASSIGN(strip_accents, GetBool(json, path, "strip_accents", lowercase));
    return std::unique_ptr<Normalizer>(new BertNormalizer(clean_text, chinese, strip_accents, lowercase));
  }
  if (type == "Precompiled") {
    FLOTILLA_ASSIGN(encoded, GetString(json, path, "precompiled_charsmap", ""));
    std::string blob;
    if (!absl::Base64Unescape(encoded, &blob)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".precompiled_charsmap: expected base64 but the text does not decode"));
    }
    if (blob.empty()) return std::unique_ptr<Normalizer>(new SequenceNormalizer({}));
    FLOTILLA_ASSIGN(normalizer, PrecompiledNormalizer::Create(blob, path));
    return std::unique_ptr<Normalizer>(std::move(normalizer));
  }
  if (type == "ByteLevel") return std::unique_ptr<Normalizer>(new ByteLevelNormalizer());
  return UnknownType(path, type, "normalizer");
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const Json& json, const std::string& path) {
  FLOTILLA_ASSIGN(type, GetType(json, path));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> pretokenizers;
    auto list = json.find("pretokenizers");
    if (list == json.end() || !list->is_array()) return FieldError(path, "pretokenizers", "an array", json.value("pretokenizers", Json()));
    for (size_t i = 0; i < list->size(); ++i) {
      FLOTILLA_ASSIGN(pretokenizer, PreTokenizerFromJson((*list)[i], absl::StrCat(path, ".pretokenizers[", i, "]")));
      pretokenizers.push_back(std::move(pretokenizer));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(pretokenizers)));
  }
  if (type == "ByteLevel") {
    FLOTILLA_ASSIGN(add_prefix_space, GetBool(json, path, "add_prefix_space", true));
    FLOTILLA_ASSIGN(use_regex, GetBool(json, path, "use_regex", true));
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(add_prefix_space, use_regex));
  }
  if (type == "Split") {
    FLOTILLA_ASSIGN(pattern, GetPattern(json, path, "pattern"));
    FLOTILLA_ASSIGN(behavior_name, GetString(json, path, "behavior"));
    FLOTILLA_ASSIGN(invert, GetBool(json, path, "invert", false));
    bool ok;
    SplitBehavior behavior = ParseBehavior(behavior_name, &ok);
    if (!ok) return FieldError(path, "behavior", "Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous", json["behavior"]);
    if (invert) pattern = std::make_shared<InvertedPattern>(pattern);
    return std::unique_ptr<PreTokenizer>(new PatternPreTokenizer(pattern, behavior));
  }
  if (type == "Metaspace") {
    FLOTILLA_ASSIGN(replacement, GetChar(json, path, "replacement", U'\u2581'));
    FLOTILLA_ASSIGN(scheme, GetPrependScheme(json, path));
    FLOTILLA_ASSIGN(split, GetBool(json, path, "split", true));
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(replacement, scheme, split));
  }
  if (type == "Whitespace") {
    // Oniguruma's \w (Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control).
    static const auto regex = *Regex::Compile(
        R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\s]+)");
    return std::unique_ptr<PreTokenizer>(new PatternPreTokenizer(std::make_shared<InvertedPattern>(regex), SplitBehavior::kRemoved));
  }
  if (type == "WhitespaceSplit") {
    return std::unique_ptr<PreTokenizer>(new PatternPreTokenizer(std::make_shared<CharPredicatePattern>(IsWhitespace), SplitBehavior::kRemoved));
  }
  if (type == "BertPreTokenizer") return std::unique_ptr<PreTokenizer>(new BertPreTokenizer());
  if (type == "Punctuation") {
    FLOTILLA_ASSIGN(behavior_name, GetString(json, path, "behavior", "Isolated"));
    bool ok;
    SplitBehavior behavior = ParseBehavior(behavior_name, &ok);
    if (!ok) return FieldError(path, "behavior", "a split behavior", json["behavior"]);
    auto pattern = std::make_shared<CharPredicatePattern>([](char32_t c) {
      return (c < 0x80 && std::ispunct(static_cast<int>(c))) || IsPunctuation(c);
    });
    return std::unique_ptr<PreTokenizer>(new PatternPreTokenizer(pattern, behavior));
  }
  if (type == "Digits") {
    FLOTILLA_ASSIGN(individual, GetBool(json, path, "individual_digits", false));
    auto pattern = std::make_shared<CharPredicatePattern>([](char32_t c) { return IsNumeric(c); });
    return std::unique_ptr<PreTokenizer>(new PatternPreTokenizer(pattern, individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous));
  }
  if (type == "CharDelimiterSplit") {
    FLOTILLA_ASSIGN(delimiter, GetChar(json, path, "delimiter", U' '));
    auto pattern = std::make_shared<CharPredicatePattern>([delimiter](char32_t c) { return c == delimiter; });
    return std::unique_ptr<PreTokenizer>(new PatternPreTokenizer(pattern, SplitBehavior::kRemoved));
  }
  return UnknownType(path, type, "pre-tokenizer");
}

absl::StatusOr<std::unique_ptr<Model>> ModelFromJson(const Json& json, const std::string& path) {
  if (!json.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected an object"));
  std::string type = json.value("type", "");
  if (type.empty()) {
    // Older files leave the type out; tokenizers tells the models apart by their fields.
    if (json.contains("merges")) type = "BPE";
    else if (json.contains("vocab") && json["vocab"].is_array()) type = "Unigram";
    else if (json.contains("max_input_chars_per_word") || json.contains("continuing_subword_prefix")) type = "WordPiece";
    else type = "WordLevel";
  }
  if (type == "BPE") {
    FLOTILLA_ASSIGN(model, BpeModel::Create(json, path));
    return std::unique_ptr<Model>(std::move(model));
  }
  if (type == "WordPiece") {
    FLOTILLA_ASSIGN(model, WordPieceModel::Create(json, path));
    return std::unique_ptr<Model>(std::move(model));
  }
  if (type == "WordLevel") {
    FLOTILLA_ASSIGN(model, WordLevelModel::Create(json, path));
    return std::unique_ptr<Model>(std::move(model));
  }
  if (type == "Unigram") {
    FLOTILLA_ASSIGN(model, UnigramModel::Create(json, path));
    return std::unique_ptr<Model>(std::move(model));
  }
  return UnknownType(path, type, "model");
}

absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const Json& json, const std::string& path) {
  FLOTILLA_ASSIGN(type, GetType(json, path));
  if (type == "TemplateProcessing") {
    FLOTILLA_ASSIGN(processor, TemplateProcessor::Create(json, path));
    return std::unique_ptr<PostProcessor>(std::move(processor));
  }
  if (type == "BertProcessing") {
    FLOTILLA_ASSIGN(separator, GetTokenPair(json, path, "sep"));
    FLOTILLA_ASSIGN(classifier, GetTokenPair(json, path, "cls"));
    return std::unique_ptr<PostProcessor>(new BertProcessor(separator, classifier));
  }
  if (type == "RobertaProcessing") {
    FLOTILLA_ASSIGN(separator, GetTokenPair(json, path, "sep"));
    FLOTILLA_ASSIGN(classifier, GetTokenPair(json, path, "cls"));
    FLOTILLA_ASSIGN(trim_offsets, GetBool(json, path, "trim_offsets", true));
    FLOTILLA_ASSIGN(add_prefix_space, GetBool(json, path, "add_prefix_space", true));
    return std::unique_ptr<PostProcessor>(new RobertaProcessor(separator, classifier, trim_offsets, add_prefix_space));
  }
  if (type == "ByteLevel") {
    FLOTILLA_ASSIGN(trim_offsets, GetBool(json, path, "trim_offsets", true));
    FLOTILLA_ASSIGN(add_prefix_space, GetBool(json, path, "add_prefix_space", true));
    return std::unique_ptr<PostProcessor>(new ByteLevelProcessor(trim_offsets, add_prefix_space));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> processors;
    auto list = json.find("processors");
    if (list == json.end() || !list->is_array()) return FieldError(path, "processors", "an array", json.value("processors", Json()));
    for (size_t i = 0; i < list->size(); ++i) {
      FLOTILLA_ASSIGN(processor, PostProcessorFromJson((*list)[i], absl::StrCat(path, ".processors[", i, "]")));
      processors.push_back(std::move(processor));
    }
    return std::unique_ptr<PostProcessor>(new SequenceProcessor(std::move(processors)));
  }
  return UnknownType(path, type, "post-processor");
}

absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const Json& json, const std::string& path) {
  FLOTILLA_ASSIGN(type, GetType(json, path));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> decoders;
    auto list = json.find("decoders");
    if (list == json.end() || !list->is_array()) return FieldError(path, "decoders", "an array", json.value("decoders", Json()));
    for (size_t i = 0; i < list->size(); ++i) {
      FLOTILLA_ASSIGN(decoder, DecoderFromJson((*list)[i], absl::StrCat(path, ".decoders[", i, "]")));
      decoders.push_back(std::move(decoder));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(decoders)));
  }
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "Metaspace") {
    FLOTILLA_ASSIGN(replacement, GetChar(json, path, "replacement", U'\u2581'));
    FLOTILLA_ASSIGN(scheme, GetPrependScheme(json, path));
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(replacement, scheme));
  }
  if (type == "WordPiece") {
    FLOTILLA_ASSIGN(prefix, GetString(json, path, "prefix", "##"));
    FLOTILLA_ASSIGN(cleanup, GetBool(json, path, "cleanup", true));
    return std::unique_ptr<Decoder>(new WordPieceDecoder(prefix, cleanup));
  }
  if (type == "BPEDecoder") {
    FLOTILLA_ASSIGN(suffix, GetString(json, path, "suffix", "</w>"));
    return std::unique_ptr<Decoder>(new BpeDecoder(suffix));
  }
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    FLOTILLA_ASSIGN(content, GetChar(json, path, "content", U' '));
    FLOTILLA_ASSIGN(start, GetUnsigned(json, path, "start", 0));
    FLOTILLA_ASSIGN(stop, GetUnsigned(json, path, "stop", 0));
    return std::unique_ptr<Decoder>(new StripDecoder(content, start, stop));
  }
  if (type == "Replace") {
    FLOTILLA_ASSIGN(pattern, GetPattern(json, path, "pattern"));
    FLOTILLA_ASSIGN(content, GetString(json, path, "content"));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(pattern, content));
  }
  return UnknownType(path, type, "decoder");
}

}  // namespace flotilla::tokenizer
