#include "services/preprocess/tokenizer/normalized_string.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <algorithm>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "services/preprocess/tokenizer/unicode.h"

namespace flotilla::tokenizer {
namespace {

// One match-data block per thread serves every Regex: it only has to hold the whole-match pair.
pcre2_match_data* ThreadMatchData() {
  thread_local std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match_data(
      pcre2_match_data_create(1, nullptr), pcre2_match_data_free);
  return match_data.get();
}

}  // namespace

absl::StatusOr<std::shared_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("CompileRegex(\"", std::string(pattern), "\"): ",
                                                   reinterpret_cast<const char*>(message),
                                                   " at offset ", error_offset));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when unavailable
  std::shared_ptr<Regex> regex(new Regex());
  regex->source_ = std::string(pattern);
  regex->code_ = code;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::ForEachMatch(std::string_view text,
                         const std::function<void(size_t, size_t)>& on_match) const {
  pcre2_match_data* match_data = ThreadMatchData();
  auto* code = static_cast<pcre2_code*>(code_);
  size_t position = 0;
  while (position <= text.size()) {
    int result = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), position,
                             PCRE2_NO_UTF_CHECK, match_data, nullptr);
    if (result < 0) break;
    PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
    size_t start = ovector[0], end = ovector[1];
    on_match(start, end);
    if (end == start) {
      // An empty match: step over one character so the search moves on.
      if (end >= text.size()) break;
      position = end + Utf8Length(static_cast<unsigned char>(text[end]));
    } else {
      position = end;
    }
  }
}

void Regex::FindMatches(std::string_view text, std::vector<PatternMatch>& matches) const {
  if (text.empty()) {
    matches.push_back({0, 0, false});
    return;
  }
  size_t previous = 0;
  ForEachMatch(text, [&](size_t start, size_t end) {
    if (previous != start) matches.push_back({previous, start, false});
    matches.push_back({start, end, true});
    previous = end;
  });
  if (previous != text.size()) matches.push_back({previous, text.size(), false});
}

std::string RegexEscape(std::string_view literal) {
  std::string escaped;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-#&~ \t\n").find(c) != std::string_view::npos) {
      if (c == '\t') { escaped += "\\t"; continue; }
      if (c == '\n') { escaped += "\\n"; continue; }
      escaped.push_back('\\');
    }
    escaped.push_back(c);
  }
  return escaped;
}

void CharPredicatePattern::FindMatches(std::string_view text,
                                       std::vector<PatternMatch>& matches) const {
  if (text.empty()) {
    matches.push_back({0, 0, false});
    return;
  }
  size_t last_offset = 0;
  size_t position = 0;
  while (position < text.size()) {
    size_t start = position;
    char32_t c = DecodeUtf8(text, position);
    if (predicate_(c)) {
      if (last_offset < start) matches.push_back({last_offset, start, false});
      matches.push_back({start, position, true});
      last_offset = position;
    }
  }
  if (last_offset < text.size()) matches.push_back({last_offset, text.size(), false});
}

void InvertedPattern::FindMatches(std::string_view text, std::vector<PatternMatch>& matches) const {
  size_t first = matches.size();
  inner_->FindMatches(text, matches);
  for (size_t i = first; i < matches.size(); ++i) matches[i].is_match = !matches[i].is_match;
}

NormalizedString::NormalizedString(std::string_view original)
    : normalized_(original), original_start_(0), original_end_(original.size()) {
  alignments_.resize(original.size());
  size_t position = 0;
  while (position < original.size()) {
    size_t start = position;
    position += Utf8Length(static_cast<unsigned char>(original[position]));
    if (position > original.size()) position = original.size();
    for (size_t i = start; i < position; ++i) {
      alignments_[i] = {static_cast<uint32_t>(start), static_cast<uint32_t>(position)};
    }
  }
}

bool NormalizedString::ConvertOffsets(size_t start, size_t end, Offsets& original) const {
  if (start == end) {
    original = {static_cast<uint32_t>(original_start_ + start),
                static_cast<uint32_t>(original_start_ + end)};
    return true;
  }
  if (start > end || end > alignments_.size()) return false;
  original = {alignments_[start].start, alignments_[end - 1].end};
  return true;
}

NormalizedString NormalizedString::Slice(size_t start, size_t end) const {
  NormalizedString slice;
  slice.normalized_ = normalized_.substr(start, end - start);
  slice.alignments_.assign(alignments_.begin() + start, alignments_.begin() + end);
  Offsets original;
  if (!ConvertOffsets(start, end, original)) original = {original_start_, original_start_};
  slice.original_start_ = original.start;
  slice.original_end_ = original.end;
  return slice;
}

void NormalizedString::TransformRange(size_t start, size_t end,
                                      const std::vector<CharChange>& changes,
                                      size_t initial_offset) {
  // Walks the replaced characters of [start, end) while emitting `changes`; see CharChange.
  size_t replaced_position = start;
  auto next_replaced_size = [&]() -> size_t {
    if (replaced_position >= end) return 0;
    size_t size = Utf8Length(static_cast<unsigned char>(normalized_[replaced_position]));
    replaced_position += size;
    return size;
  };
  size_t offset = start;
  for (size_t i = 0; i < initial_offset; ++i) offset += next_replaced_size();

  std::string replacement;
  std::vector<Offsets> replacement_alignments;
  replacement.reserve(end - start + changes.size());
  replacement_alignments.reserve(end - start + changes.size());
  const Offsets empty_alignment{original_start_, original_start_};
  for (const CharChange& step : changes) {
    size_t index = offset;
    Offsets alignment;
    if (step.change > 0) {
      alignment = index < 1 ? empty_alignment : alignments_[index - 1];
    } else {
      alignment = index < alignments_.size() ? alignments_[index]
                  : alignments_.empty()      ? empty_alignment
                                             : alignments_.back();
      offset += next_replaced_size();
    }
    if (step.change < 0) {
      for (int removed = 0; removed < -step.change; ++removed) offset += next_replaced_size();
    }
    size_t before = replacement.size();
    AppendUtf8(replacement, step.character);
    replacement_alignments.insert(replacement_alignments.end(), replacement.size() - before,
                                  alignment);
  }
  normalized_.replace(start, end - start, replacement);
  alignments_.erase(alignments_.begin() + start, alignments_.begin() + end);
  alignments_.insert(alignments_.begin() + start, replacement_alignments.begin(),
                     replacement_alignments.end());
}

void NormalizedString::Lowercase() {
  // ASCII-only text keeps its alignments: lowercasing maps each byte to one byte.
  bool ascii = true;
  for (char c : normalized_) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) {
    for (char& c : normalized_) {
      if (c >= 'A' && c <= 'Z') c += 32;
    }
    return;
  }
  std::vector<CharChange> changes;
  changes.reserve(normalized_.size());
  std::u32string lowered;
  size_t position = 0;
  while (position < normalized_.size()) {
    char32_t c = DecodeUtf8(normalized_, position);
    lowered.clear();
    AppendLowercase(c, lowered);
    for (size_t i = 0; i < lowered.size(); ++i) changes.push_back({lowered[i], i > 0 ? 1 : 0});
  }
  Transform(changes, 0);
}

void NormalizedString::Filter(const std::function<bool(char32_t)>& keep) {
  int removed = 0;
  size_t removed_start = 0;
  std::vector<CharChange> changes;
  changes.reserve(normalized_.size());
  bool has_last = false;
  char32_t last = 0;
  bool any_removed = false;
  size_t position = 0;
  while (position < normalized_.size()) {
    char32_t c = DecodeUtf8(normalized_, position);
    if (keep(c)) {
      if (has_last) {
        changes.push_back({last, -removed});
      } else {
        removed_start = removed;
      }
      last = c;
      has_last = true;
      removed = 0;
    } else {
      ++removed;
      any_removed = true;
    }
  }
  if (!any_removed) return;
  if (has_last) changes.push_back({last, -removed});
  Transform(changes, removed_start);
}

void NormalizedString::Map(const std::function<char32_t(char32_t)>& map) {
  std::vector<CharChange> changes;
  changes.reserve(normalized_.size());
  bool changed = false;
  size_t position = 0;
  while (position < normalized_.size()) {
    char32_t c = DecodeUtf8(normalized_, position);
    char32_t mapped = map(c);
    changed |= mapped != c;
    changes.push_back({mapped, 0});
  }
  if (changed) Transform(changes, 0);
}

void NormalizedString::Prepend(std::string_view prefix) {
  if (normalized_.empty()) return;
  size_t position = 0;
  char32_t first = DecodeUtf8(normalized_, position);
  std::vector<CharChange> changes;
  size_t prefix_position = 0;
  bool is_first = true;
  while (prefix_position < prefix.size()) {
    changes.push_back({DecodeUtf8(prefix, prefix_position), is_first ? 0 : 1});
    is_first = false;
  }
  changes.push_back({first, 1});
  TransformRange(0, position, changes, 0);
}

void NormalizedString::Append(std::string_view suffix) {
  if (normalized_.empty()) return;
  size_t last_start = normalized_.size() - 1;
  while (last_start > 0 && (static_cast<unsigned char>(normalized_[last_start]) & 0xC0) == 0x80) {
    --last_start;
  }
  size_t position = last_start;
  char32_t last = DecodeUtf8(normalized_, position);
  std::vector<CharChange> changes{{last, 0}};
  size_t suffix_position = 0;
  while (suffix_position < suffix.size()) changes.push_back({DecodeUtf8(suffix, suffix_position), 1});
  TransformRange(last_start, normalized_.size(), changes, 0);
}

void NormalizedString::Strip(bool left, bool right) {
  std::vector<char32_t> characters;
  size_t position = 0;
  while (position < normalized_.size()) characters.push_back(DecodeUtf8(normalized_, position));
  size_t leading = 0, trailing = 0;
  if (left) {
    while (leading < characters.size() && IsWhitespace(characters[leading])) ++leading;
  }
  if (right) {
    while (trailing < characters.size() && IsWhitespace(characters[characters.size() - 1 - trailing])) {
      ++trailing;
    }
  }
  if (leading == 0 && trailing == 0) return;
  std::vector<CharChange> changes;
  size_t count = characters.size();
  for (size_t i = 0; i < count; ++i) {
    if (i < leading || i >= count - trailing) continue;
    // tokenizers compares the character index with the byte length here; kept for identical offsets.
    if (static_cast<long>(i) == static_cast<long>(normalized_.size()) - static_cast<long>(trailing) - 1) {
      changes.push_back({characters[i], -static_cast<int>(trailing)});
    } else {
      changes.push_back({characters[i], 0});
    }
  }
  Transform(changes, leading);
}

void NormalizedString::Replace(const Pattern& pattern, std::string_view content) {
  std::vector<PatternMatch> matches;
  pattern.FindMatches(normalized_, matches);
  bool any = false;
  for (const auto& match : matches) any |= match.is_match;
  if (!any) return;
  std::string new_normalized;
  std::vector<Offsets> new_alignments;
  new_normalized.reserve(normalized_.size());
  new_alignments.reserve(alignments_.size());
  size_t last_end = 0;
  const Offsets empty_alignment{original_start_, original_start_};
  for (const auto& match : matches) {
    if (!match.is_match) continue;
    new_normalized.append(normalized_, last_end, match.start - last_end);
    new_alignments.insert(new_alignments.end(), alignments_.begin() + last_end,
                          alignments_.begin() + match.start);
    // Every inserted character shares the alignment of the last byte of the match.
    Offsets alignment = match.end < 1 ? empty_alignment : alignments_[match.end - 1];
    size_t before = new_normalized.size();
    new_normalized.append(content);
    new_alignments.insert(new_alignments.end(), new_normalized.size() - before, alignment);
    last_end = match.end;
  }
  new_normalized.append(normalized_, last_end);
  new_alignments.insert(new_alignments.end(), alignments_.begin() + last_end, alignments_.end());
  normalized_ = std::move(new_normalized);
  alignments_ = std::move(new_alignments);
}

void NormalizedString::UnicodeNormalize(std::string_view form) {
  UErrorCode error = U_ZERO_ERROR;
  const bool compatibility = form == "NFKC" || form == "NFKD";
  const bool compose = form == "NFC" || form == "NFKC";
  const icu::Normalizer2* target = nullptr;
  if (form == "NFC") target = icu::Normalizer2::getNFCInstance(error);
  else if (form == "NFD") target = icu::Normalizer2::getNFDInstance(error);
  else if (form == "NFKC") target = icu::Normalizer2::getNFKCInstance(error);
  else target = icu::Normalizer2::getNFKDInstance(error);
  const icu::Normalizer2* decomposer = compatibility ? icu::Normalizer2::getNFKDInstance(error)
                                                     : icu::Normalizer2::getNFDInstance(error);
  const icu::Normalizer2* composer = icu::Normalizer2::getNFCInstance(error);
  if (U_FAILURE(error)) return;
  {
    icu::UnicodeString text = icu::UnicodeString::fromUTF8(normalized_);
    if (target->isNormalized(text, error) && U_SUCCESS(error)) return;
    error = U_ZERO_ERROR;
  }
  // Note [Normalization alignments]: the steps of unicode-normalization-alignments, which
  // tokenizers uses: each character decomposes on its own (first piece replaces it, the rest are
  // inserted), combining marks are reordered by canonical class carrying their change, and
  // composition folds a character into its starter, adding (its change - 1) to the starter's.
  std::vector<CharChange> decomposed;
  decomposed.reserve(normalized_.size() + 8);
  size_t position = 0;
  while (position < normalized_.size()) {
    char32_t c = DecodeUtf8(normalized_, position);
    icu::UnicodeString decomposition;
    if (decomposer->getDecomposition(static_cast<UChar32>(c), decomposition)) {
      icu::UnicodeString full = decomposer->normalize(decomposition, error);
      bool first = true;
      for (int32_t i = 0; i < full.length();) {
        UChar32 piece = full.char32At(i);
        decomposed.push_back({static_cast<char32_t>(piece), first ? 0 : 1});
        first = false;
        i += U16_LENGTH(piece);
      }
    } else {
      decomposed.push_back({c, 0});
    }
  }
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < decomposed.size();) {
    if (u_getCombiningClass(static_cast<UChar32>(decomposed[i].character)) == 0) {
      ++i;
      continue;
    }
    size_t run_end = i;
    while (run_end < decomposed.size() &&
           u_getCombiningClass(static_cast<UChar32>(decomposed[run_end].character)) != 0) {
      ++run_end;
    }
    std::stable_sort(decomposed.begin() + i, decomposed.begin() + run_end,
                     [](const CharChange& left, const CharChange& right) {
                       return u_getCombiningClass(static_cast<UChar32>(left.character)) <
                              u_getCombiningClass(static_cast<UChar32>(right.character));
                     });
    i = run_end;
  }
  if (!compose) {
    Transform(decomposed, 0);
    return;
  }
  std::vector<CharChange> composed;
  composed.reserve(decomposed.size());
  int64_t starter = -1;
  for (const CharChange& step : decomposed) {
    uint8_t combining_class = u_getCombiningClass(static_cast<UChar32>(step.character));
    if (starter >= 0) {
      bool adjacent = static_cast<int64_t>(composed.size()) - 1 == starter;
      bool unblocked = adjacent ||
                       (combining_class != 0 &&
                        u_getCombiningClass(static_cast<UChar32>(composed.back().character)) < combining_class);
      if (unblocked) {
        UChar32 pair = composer->composePair(static_cast<UChar32>(composed[starter].character),
                                             static_cast<UChar32>(step.character));
        if (pair >= 0) {
          composed[starter].character = static_cast<char32_t>(pair);
          composed[starter].change += step.change - 1;
          continue;
        }
      }
    }
    composed.push_back(step);
    if (combining_class == 0) starter = static_cast<int64_t>(composed.size()) - 1;
  }
  Transform(composed, 0);
}

void NormalizedString::Split(const Pattern& pattern, SplitBehavior behavior,
                             std::vector<NormalizedString>& pieces) const {
  std::vector<PatternMatch> matches;
  pattern.FindMatches(normalized_, matches);
  struct Piece {
    size_t start, end;
    bool remove;
  };
  std::vector<Piece> splits;
  splits.reserve(matches.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& match : matches) splits.push_back({match.start, match.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const auto& match : matches) splits.push_back({match.start, match.end, match.is_match});
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& match : matches) {
        if (match.is_match == previous_match && !splits.empty()) {
          splits.back().end = match.end;
        } else {
          splits.push_back({match.start, match.end, false});
        }
        previous_match = match.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& match : matches) {
        if (match.is_match && !previous_match && !splits.empty()) {
          splits.back().end = match.end;
        } else {
          splits.push_back({match.start, match.end, false});
        }
        previous_match = match.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->is_match && !previous_match && !splits.empty()) {
          splits.back().start = it->start;
        } else {
          splits.push_back({it->start, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const auto& split : splits) {
    if (!split.remove) pieces.push_back(Slice(split.start, split.end));
  }
}

}  // namespace flotilla::tokenizer
