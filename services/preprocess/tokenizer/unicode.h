// Unicode helpers for the tokenizer: UTF-8 decoding/encoding and the character predicates of Rust's
// `char` (is_whitespace, is_alphanumeric, is_numeric, ...) that the `tokenizers` library relies
// on, answered by ICU so that they follow the Unicode tables rather than a hand-written list.
//
//   size_t position = 0;
//   char32_t c = flotilla::tokenizer::DecodeUtf8(text, position);  // advances position
//
// Everything here is stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace flotilla::tokenizer {

// Decodes the code point at `position` of valid UTF-8 and advances `position` past it.
inline char32_t DecodeUtf8(std::string_view text, size_t& position) {
  const auto byte = static_cast<unsigned char>(text[position]);
  if (byte < 0x80) {
    ++position;
    return byte;
  }
  int length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : 2;
  char32_t code_point = byte & (0x7F >> length);
  for (int i = 1; i < length; ++i) {
    code_point = (code_point << 6) | (static_cast<unsigned char>(text[position + i]) & 0x3F);
  }
  position += length;
  return code_point;
}

// Byte length of the UTF-8 sequence that starts with `lead`.
inline int Utf8Length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
}

inline int Utf8Length(char32_t code_point) {
  return code_point < 0x80 ? 1 : code_point < 0x800 ? 2 : code_point < 0x10000 ? 3 : 4;
}

inline void AppendUtf8(std::string& output, char32_t code_point) {
  if (code_point < 0x80) {
    output.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    output.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    output.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    output.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    output.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    output.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    output.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    output.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    output.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    output.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

inline std::string Utf8(char32_t code_point) {
  std::string output;
  AppendUtf8(output, code_point);
  return output;
}

// Returns the byte offset of the first invalid UTF-8 sequence in `text`, or npos when it is valid.
size_t FindInvalidUtf8(std::string_view text);

// String::from_utf8_lossy: every maximal invalid subsequence becomes U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

// Length of the longest prefix of `bytes` that ends on a complete UTF-8 sequence, leaving out a
// trailing sequence that is incomplete but could still become valid with more bytes.
size_t CompleteUtf8Prefix(std::string_view bytes);

// Rust's char predicates.
bool IsWhitespace(char32_t c);    // White_Space
bool IsAlphanumeric(char32_t c);  // Alphabetic or N*
bool IsNumeric(char32_t c);       // Nd, Nl, No
bool IsPunctuation(char32_t c);   // P*
bool IsOther(char32_t c);         // C* (Cc, Cf, Cs, Co, Cn)
bool IsMarkNonspacing(char32_t c);  // Mn

// char::to_lowercase (unconditional full mapping) appended as UTF-8 code points to `output`.
void AppendLowercase(char32_t c, std::u32string& output);

}  // namespace flotilla::tokenizer
