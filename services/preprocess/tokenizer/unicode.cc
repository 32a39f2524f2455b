#include "services/preprocess/tokenizer/unicode.h"

#include <unicode/uchar.h>

namespace flotilla::tokenizer {
namespace {

// The length of a valid UTF-8 sequence at `position` (1 to 4), or 0 when the bytes there do not
// start one; `available` counts how many bytes a valid prefix covers (for incomplete tails).
int ValidSequenceLength(std::string_view text, size_t position, size_t* valid_prefix) {
  const auto byte = static_cast<unsigned char>(text[position]);
  *valid_prefix = 0;
  if (byte < 0x80) return 1;
  int length;
  unsigned char low = 0x80, high = 0xBF;
  if (byte >= 0xC2 && byte <= 0xDF) {
    length = 2;
  } else if (byte >= 0xE0 && byte <= 0xEF) {
    length = 3;
    if (byte == 0xE0) low = 0xA0;
    if (byte == 0xED) high = 0x9F;
  } else if (byte >= 0xF0 && byte <= 0xF4) {
    length = 4;
    if (byte == 0xF0) low = 0x90;
    if (byte == 0xF4) high = 0x8F;
  } else {
    return 0;
  }
  *valid_prefix = 1;
  for (int i = 1; i < length; ++i) {
    if (position + i >= text.size()) return 0;
    const auto next = static_cast<unsigned char>(text[position + i]);
    if (i == 1 ? (next < low || next > high) : (next < 0x80 || next > 0xBF)) return 0;
    *valid_prefix = i + 1;
  }
  return length;
}

}  // namespace

size_t FindInvalidUtf8(std::string_view text) {
  size_t position = 0;
  while (position < text.size()) {
    if (static_cast<unsigned char>(text[position]) < 0x80) {
      ++position;
      continue;
    }
    size_t valid_prefix;
    int length = ValidSequenceLength(text, position, &valid_prefix);
    if (length == 0) return position;
    position += length;
  }
  return std::string_view::npos;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string output;
  output.reserve(bytes.size());
  size_t position = 0;
  while (position < bytes.size()) {
    size_t valid_prefix;
    int length = ValidSequenceLength(bytes, position, &valid_prefix);
    if (length > 0) {
      output.append(bytes.substr(position, length));
      position += length;
    } else {
      output.append("\xEF\xBF\xBD");
      position += valid_prefix > 0 ? valid_prefix : 1;
    }
  }
  return output;
}

size_t CompleteUtf8Prefix(std::string_view bytes) {
  // Only the last three bytes can belong to an incomplete sequence.
  size_t start = bytes.size() >= 3 ? bytes.size() - 3 : 0;
  for (size_t position = start; position < bytes.size(); ++position) {
    const auto byte = static_cast<unsigned char>(bytes[position]);
    if (byte < 0xC2 || byte > 0xF4) continue;
    size_t valid_prefix;
    int length = ValidSequenceLength(bytes, position, &valid_prefix);
    if (length == 0 && valid_prefix == bytes.size() - position) return position;
  }
  return bytes.size();
}

bool IsWhitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

bool IsNumeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  int8_t type = u_charType(static_cast<UChar32>(c));
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

bool IsAlphanumeric(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC) || IsNumeric(c);
}

bool IsPunctuation(char32_t c) {
  int32_t mask = U_MASK(u_charType(static_cast<UChar32>(c)));
  return (mask & U_GC_P_MASK) != 0;
}

bool IsOther(char32_t c) {
  int32_t mask = U_MASK(u_charType(static_cast<UChar32>(c)));
  return (mask & U_GC_C_MASK) != 0;
}

bool IsMarkNonspacing(char32_t c) {
  if (c < 0x300) return false;
  return u_charType(static_cast<UChar32>(c)) == U_NON_SPACING_MARK;
}

void AppendLowercase(char32_t c, std::u32string& output) {
  if (c < 0x80) {
    output.push_back((c >= 'A' && c <= 'Z') ? c + 32 : c);
  } else if (c == 0x130) {  // the one unconditional lowercase mapping to two code points
    output.push_back(U'i');
    output.push_back(0x307);
  } else {
    output.push_back(static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
  }
}

}  // namespace flotilla::tokenizer
