// NormalizedString: a piece of the input as the tokenizer pipeline transforms it, with every byte of
// the transformed text aligned to the range of input bytes it came from. This is what lets
// `Encoding::offsets` point into the caller's text after lowercasing, NFKC, byte-level mapping or
// prepending "▁". The semantics follow `tokenizers/src/tokenizer/normalizer.rs` (transform,
// filter, replace, prepend, split with a delimiter behaviour); read that file's doc comments for the
// alignment rules, which are reproduced exactly because they decide the offsets Python reports.
//
//   NormalizedString piece("Hello World");
//   piece.Lowercase();
//   std::vector<NormalizedString> words;
//   piece.Split(WhitespacePattern(), SplitBehavior::kRemoved, words);
//
// Also here: Regex (PCRE2 with JIT) and the Pattern interface used by Split and Replace.
// A NormalizedString is a value; Regex and Pattern objects are immutable and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace flotilla::tokenizer {

// [start, end) byte offsets.
struct Offsets {
  uint32_t start = 0;
  uint32_t end = 0;
  bool operator==(const Offsets&) const = default;
};

// One piece found by a Pattern: a match or the text between two matches.
struct PatternMatch {
  size_t start;
  size_t end;
  bool is_match;
};

// Splits text into matches and gaps that together cover it, in order (tokenizers' Pattern trait).
class Pattern {
 public:
  virtual ~Pattern() = default;
  // Appends to `matches`; an empty text gives one gap (0, 0).
  virtual void FindMatches(std::string_view text, std::vector<PatternMatch>& matches) const = 0;
};

// A PCRE2 regex compiled with UTF + UCP and JIT. Match data is per thread, so one Regex may be
// used from any number of threads.
class Regex : public Pattern {
 public:
  static absl::StatusOr<std::shared_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex() override;
  // Calls `on_match(start, end)` for each non-overlapping match, left to right.
  void ForEachMatch(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const;
  void FindMatches(std::string_view text, std::vector<PatternMatch>& matches) const override;
  const std::string& source() const { return source_; }

 private:
  Regex() = default;
  std::string source_;
  void* code_ = nullptr;  // pcre2_code_8*
};

// Escapes a literal for use inside a PCRE2 pattern.
std::string RegexEscape(std::string_view literal);

// Every character for which the predicate holds is one match.
class CharPredicatePattern : public Pattern {
 public:
  explicit CharPredicatePattern(std::function<bool(char32_t)> predicate)
      : predicate_(std::move(predicate)) {}
  void FindMatches(std::string_view text, std::vector<PatternMatch>& matches) const override;

 private:
  std::function<bool(char32_t)> predicate_;
};

// Swaps matches and gaps.
class InvertedPattern : public Pattern {
 public:
  explicit InvertedPattern(std::shared_ptr<const Pattern> inner) : inner_(std::move(inner)) {}
  void FindMatches(std::string_view text, std::vector<PatternMatch>& matches) const override;

 private:
  std::shared_ptr<const Pattern> inner_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// One (character, change) step of a transformation: change 0 replaces one character of the
// current text, 1 inserts, -n replaces one character and removes n more (tokenizers' transform).
struct CharChange {
  char32_t character;
  int change;
};

class NormalizedString {
 public:
  NormalizedString() = default;
  // The whole input: each byte aligned to the input character that holds it.
  explicit NormalizedString(std::string_view original);

  const std::string& get() const { return normalized_; }
  bool empty() const { return normalized_.empty(); }
  size_t size() const { return normalized_.size(); }
  // The input range this piece covers (absolute offsets in the input text).
  Offsets OriginalOffsets() const { return {original_start_, original_end_}; }
  const std::vector<Offsets>& alignments() const { return alignments_; }

  // Input range of the normalized byte range [start, end); false when out of bounds.
  bool ConvertOffsets(size_t start, size_t end, Offsets& original) const;
  // The piece of this string covering normalized bytes [start, end).
  NormalizedString Slice(size_t start, size_t end) const;

  // Replaces the characters of normalized bytes [start, end) by `changes` (see CharChange),
  // after dropping `initial_offset` characters of the range.
  void TransformRange(size_t start, size_t end, const std::vector<CharChange>& changes,
                      size_t initial_offset);
  void Transform(const std::vector<CharChange>& changes, size_t initial_offset) {
    TransformRange(0, normalized_.size(), changes, initial_offset);
  }

  void Lowercase();
  void Filter(const std::function<bool(char32_t)>& keep);
  void Map(const std::function<char32_t(char32_t)>& map);
  void Prepend(std::string_view prefix);
  void Append(std::string_view suffix);
  void Strip(bool left, bool right);
  void Replace(const Pattern& pattern, std::string_view content);
  // form: "NFC", "NFD", "NFKC" or "NFKD".
  void UnicodeNormalize(std::string_view form);

  // Appends the pieces of this string split by `pattern` with `behavior`.
  void Split(const Pattern& pattern, SplitBehavior behavior,
             std::vector<NormalizedString>& pieces) const;

 private:
  std::string normalized_;
  std::vector<Offsets> alignments_;  // one per byte of normalized_, absolute input offsets
  uint32_t original_start_ = 0;
  uint32_t original_end_ = 0;
};

}  // namespace flotilla::tokenizer
