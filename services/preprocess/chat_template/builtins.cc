// jinja2's built-in filters and tests (jinja2/filters.py, jinja2/tests.py), transformers' overrides
// (tojson, raise_exception, strftime_now, namespace, dict), and the Python methods of str, dict and
// list that the immutable sandbox lets a template call.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <optional>

#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/locid.h>

#include "absl/strings/str_cat.h"
#include "services/preprocess/chat_template/renderer.h"

namespace flotilla::chat_template {

std::string FormatPercent(Renderer& renderer, const std::string& format, const Value& arguments, SourceLocation location);

namespace {

// ---- argument helpers -------------------------------------------------------------------------

// Binds positional and keyword arguments to named parameters, as a Python signature does.
class Signature {
 public:
  Signature(Renderer& renderer, SourceLocation location, const std::string& function, CallArguments& arguments,
            std::vector<std::string> names)
      : renderer_(renderer), location_(location), function_(function), values_(names.size()), names_(std::move(names)) {
    if (arguments.positional.size() > names_.size()) {
      renderer_.Fail(location_, absl::StrCat(function_, "() takes at most ", names_.size(), " argument(s) (", arguments.positional.size(), " given)"));
    }
    for (size_t i = 0; i < arguments.positional.size(); ++i) values_[i] = arguments.positional[i];
    for (auto& [keyword, value] : arguments.keyword) {
      auto it = std::find(names_.begin(), names_.end(), keyword);
      if (it == names_.end()) renderer_.Fail(location_, function_ + "() got an unexpected keyword argument '" + keyword + "'");
      values_[it - names_.begin()] = value;
    }
  }
  // The argument, or `fallback` when it was not passed.
  Value Get(size_t index, Value fallback = Value::Undefined()) const {
    return values_[index].has_value() ? *values_[index] : fallback;
  }
  bool Has(size_t index) const { return values_[index].has_value(); }

 private:
  Renderer& renderer_;
  SourceLocation location_;
  std::string function_;
  std::vector<std::optional<Value>> values_;
  std::vector<std::string> names_;
};

std::string ToLowerUnicode(const std::string& text) {
  bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii) {
    std::string out = text;
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }
  std::string out;
  icu::UnicodeString::fromUTF8(text).toLower(icu::Locale::getRoot()).toUTF8String(out);
  return out;
}

std::string ToUpperUnicode(const std::string& text) {
  bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii) {
    std::string out = text;
    for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
  }
  std::string out;
  icu::UnicodeString::fromUTF8(text).toUpper(icu::Locale::getRoot()).toUTF8String(out);
  return out;
}

std::string MapCodePoint(char32_t c, bool title) {
  std::string one;
  AppendUtf8(one, c);
  if (!title) return one;
  std::string out;
  icu::UnicodeString::fromUTF8(one).toTitle(nullptr, icu::Locale::getRoot(), U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT).toUTF8String(out);
  return out;
}

bool IsCased(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASED); }

// Python's str.title(): a cased character after an uncased one starts a word.
std::string PythonTitle(const std::string& text) {
  std::string out;
  bool previous_cased = false;
  for (char32_t c : DecodeUtf8(text)) {
    if (previous_cased) {
      out += ToLowerUnicode(MapCodePoint(c, false));
    } else {
      out += MapCodePoint(c, true);
    }
    previous_cased = IsCased(c);
  }
  return out;
}

// Python's str.capitalize(): first character title-cased, the rest lower-cased.
std::string PythonCapitalize(const std::string& text) {
  std::vector<char32_t> code_points = DecodeUtf8(text);
  if (code_points.empty()) return "";
  return MapCodePoint(code_points[0], true) + ToLowerUnicode(EncodeUtf8(code_points, 1));
}

bool IsWordCharacter(char32_t c) {
  return c == '_' || u_isalnum(static_cast<UChar32>(c)) || u_charType(static_cast<UChar32>(c)) == U_NON_SPACING_MARK ||
         u_charType(static_cast<UChar32>(c)) == U_COMBINING_SPACING_MARK;
}

std::string Strip(const std::string& text, const Value& characters, bool left, bool right) {
  std::vector<char32_t> code_points = DecodeUtf8(text);
  std::vector<char32_t> strip_set;
  bool whitespace = characters.IsNone() || characters.IsUndefined();
  if (!whitespace) strip_set = DecodeUtf8(characters.AsString());
  auto should_strip = [&](char32_t c) {
    return whitespace ? IsPythonSpace(c) : std::find(strip_set.begin(), strip_set.end(), c) != strip_set.end();
  };
  size_t begin = 0;
  size_t end = code_points.size();
  if (left) {
    while (begin < end && should_strip(code_points[begin])) ++begin;
  }
  if (right) {
    while (end > begin && should_strip(code_points[end - 1])) --end;
  }
  return EncodeUtf8(code_points, begin, end);
}

// Python's str.split(sep=None, maxsplit=-1) and rsplit.
List Split(const std::string& text, const Value& separator, int64_t max_split, bool from_right) {
  List parts;
  if (separator.IsNone() || separator.IsUndefined()) {
    std::vector<char32_t> code_points = DecodeUtf8(text);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < code_points.size()) {
      while (i < code_points.size() && IsPythonSpace(code_points[i])) ++i;
      if (i >= code_points.size()) break;
      size_t start = i;
      while (i < code_points.size() && !IsPythonSpace(code_points[i])) ++i;
      words.emplace_back(start, i);
    }
    if (max_split < 0 || static_cast<size_t>(max_split) >= words.size()) {
      for (auto [start, end] : words) parts.emplace_back(EncodeUtf8(code_points, start, end));
      return parts;
    }
    if (!from_right) {
      for (int64_t k = 0; k < max_split; ++k) parts.emplace_back(EncodeUtf8(code_points, words[k].first, words[k].second));
      // The remainder keeps its whitespace as written, trailing included.
      parts.emplace_back(EncodeUtf8(code_points, words[max_split].first, code_points.size()));
    } else {
      size_t keep = words.size() - max_split;
      parts.emplace_back(EncodeUtf8(code_points, 0, words[keep - 1].second));
      for (size_t k = keep; k < words.size(); ++k) parts.emplace_back(EncodeUtf8(code_points, words[k].first, words[k].second));
    }
    return parts;
  }
  const std::string& sep = separator.AsString();
  std::vector<std::string> pieces;
  size_t start = 0;
  while (true) {
    size_t found = text.find(sep, start);
    if (found == std::string::npos) break;
    pieces.push_back(text.substr(start, found - start));
    start = found + sep.size();
  }
  pieces.push_back(text.substr(start));
  if (max_split >= 0 && pieces.size() > static_cast<size_t>(max_split) + 1) {
    std::vector<std::string> merged;
    if (!from_right) {
      for (int64_t k = 0; k < max_split; ++k) merged.push_back(pieces[k]);
      std::string rest = pieces[max_split];
      for (size_t k = max_split + 1; k < pieces.size(); ++k) rest += sep + pieces[k];
      merged.push_back(rest);
    } else {
      size_t keep = pieces.size() - max_split;
      std::string rest = pieces[0];
      for (size_t k = 1; k < keep; ++k) rest += sep + pieces[k];
      merged.push_back(rest);
      for (size_t k = keep; k < pieces.size(); ++k) merged.push_back(pieces[k]);
    }
    pieces = std::move(merged);
  }
  for (auto& piece : pieces) parts.emplace_back(std::move(piece));
  return parts;
}

bool IsLineBoundary(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e || c == 0x85 || c == 0x2028 || c == 0x2029;
}

// Python's str.splitlines(keepends=False).
std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<char32_t> code_points = DecodeUtf8(text);
  std::vector<std::string> lines;
  size_t start = 0;
  size_t i = 0;
  while (i < code_points.size()) {
    if (IsLineBoundary(code_points[i])) {
      lines.push_back(EncodeUtf8(code_points, start, i));
      if (code_points[i] == '\r' && i + 1 < code_points.size() && code_points[i + 1] == '\n') ++i;
      start = i + 1;
    }
    ++i;
  }
  if (start < code_points.size()) lines.push_back(EncodeUtf8(code_points, start));
  return lines;
}

std::string Replace(const std::string& text, const std::string& old_text, const std::string& new_text, int64_t count) {
  if (count == 0) return text;
  std::string out;
  if (old_text.empty()) {
    // Python inserts `new` between characters and at both ends.
    std::vector<char32_t> code_points = DecodeUtf8(text);
    int64_t done = 0;
    for (size_t i = 0; i <= code_points.size(); ++i) {
      if (count < 0 || done < count) {
        out += new_text;
        ++done;
      }
      if (i < code_points.size()) AppendUtf8(out, code_points[i]);
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t found = text.find(old_text, start);
    if (found == std::string::npos) break;
    out.append(text, start, found - start);
    out += new_text;
    start = found + old_text.size();
    ++done;
  }
  out.append(text, start, std::string::npos);
  return out;
}

std::string HtmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&#39;"; break;
      case '"': out += "&#34;"; break;
      default: out += c;
    }
  }
  return out;
}

int64_t Length(Renderer& renderer, const Value& value, SourceLocation location) {
  switch (value.kind()) {
    case Value::Kind::kUndefined: return 0;
    case Value::Kind::kString: return static_cast<int64_t>(DecodeUtf8(value.AsString()).size());
    case Value::Kind::kList:
    case Value::Kind::kTuple: return static_cast<int64_t>(value.AsList().size());
    case Value::Kind::kDict: return static_cast<int64_t>(value.AsDict().size());
    default: renderer.Fail(location, "object of type '" + PythonTypeName(value) + "' has no len()");
  }
}

std::string JsonEscape(const std::string& text, bool ensure_ascii) {
  std::string out = "\"";
  for (char32_t c : DecodeUtf8(text)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default: {
        char escaped[16];
        if (c < 0x20 || (ensure_ascii && c >= 0x7f)) {
          if (c >= 0x10000) {
            char32_t v = c - 0x10000;
            std::snprintf(escaped, sizeof(escaped), "\\u%04x\\u%04x", static_cast<unsigned>(0xd800 | (v >> 10)),
                          static_cast<unsigned>(0xdc00 | (v & 0x3ff)));
          } else {
            std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned>(c));
          }
          out += escaped;
        } else {
          AppendUtf8(out, c);
        }
      }
    }
  }
  return out + "\"";
}

struct JsonLayout {
  bool ensure_ascii;
  std::optional<std::string> indent;
  std::string item_separator;
  std::string key_separator;
  bool sort_keys;
};

std::string JsonNumber(const Value& value) {
  if (value.IsBool()) return value.AsBool() ? "true" : "false";
  if (value.IsInt()) return std::to_string(value.AsInt());
  double number = value.AsDouble();
  if (std::isnan(number)) return "NaN";
  if (std::isinf(number)) return number > 0 ? "Infinity" : "-Infinity";
  return PythonFloatRepr(number);
}

void WriteJson(const Value& value, const JsonLayout& layout, int depth, std::string& out, SourceLocation location) {
  if (depth > 500) throw TemplateError(TemplateError::Kind::kLimit, location, "tojson: value nested deeper than 500 levels");
  auto newline = [&](int level) {
    if (!layout.indent) return;
    out += '\n';
    for (int i = 0; i < level; ++i) out += *layout.indent;
  };
  switch (value.kind()) {
    case Value::Kind::kNone: out += "null"; return;
    case Value::Kind::kBool:
    case Value::Kind::kInt:
    case Value::Kind::kFloat: out += JsonNumber(value); return;
    case Value::Kind::kString: out += JsonEscape(value.AsString(), layout.ensure_ascii); return;
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      const List& items = value.AsList();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += layout.item_separator;
        newline(depth + 1);
        WriteJson(items[i], layout, depth + 1, out, location);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::kDict: {
      const Dict& items = value.AsDict();
      if (items.empty()) {
        out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> entries;
      for (const auto& [key, item] : items) {
        std::string key_text;
        if (key.IsString()) {
          key_text = key.AsString();
        } else if (key.IsNone()) {
          key_text = "null";
        } else if (key.IsNumber()) {
          key_text = JsonNumber(key);
        } else {
          throw TemplateError(TemplateError::Kind::kRuntime, location,
                              "keys must be str, int, float, bool or None, not " + PythonTypeName(key));
        }
        entries.emplace_back(std::move(key_text), &item);
      }
      if (layout.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += layout.item_separator;
        newline(depth + 1);
        out += JsonEscape(entries[i].first, layout.ensure_ascii);
        out += layout.key_separator;
        WriteJson(*entries[i].second, layout, depth + 1, out, location);
      }
      newline(depth);
      out += '}';
      return;
    }
    default:
      throw TemplateError(TemplateError::Kind::kRuntime, location,
                          "Object of type " + PythonTypeName(value) + " is not JSON serializable");
  }
}

// ---- attribute getters as jinja2's make_attrgetter builds them -----------------------------------

Value GetAttributePath(Renderer& renderer, const Value& item, const Value& attribute, SourceLocation location) {
  if (attribute.IsNone() || attribute.IsUndefined()) return item;
  if (!attribute.IsString()) return renderer.GetItem(item, attribute, location);
  Value current = item;
  std::string path = attribute.AsString();
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    current = renderer.GetItem(current, numeric ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part), location);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return current;
}

Value IgnoreCase(const Value& value) { return value.IsString() ? Value(ToLowerUnicode(value.AsString())) : value; }

// Python's round(x, ndigits) for floats: correctly rounded, ties to even on the exact binary value.
double PythonRound(double value, int64_t digits) {
  if (!std::isfinite(value)) return value;
  if (digits > 300) return value;
  if (digits < 0) {
    double scale = std::pow(10.0, static_cast<double>(-digits));
    return std::nearbyint(value / scale) * scale;
  }
  char buffer[512];
  std::snprintf(buffer, sizeof(buffer), "%.*f", static_cast<int>(digits), value);
  return std::strtod(buffer, nullptr);
}

// A width or precision a template asks for: more than the whole output may hold is an error up
// front, rather than gigabytes of padding (or an overflowing int) discovered later.
int64_t CheckedCount(Renderer& renderer, int64_t count, SourceLocation location, const char* what) {
  const auto limit = static_cast<int64_t>(renderer.limits().max_output_bytes);
  if (count > limit) {
    renderer.Fail(location, absl::StrCat(what, " ", count, " exceeds the rendered output limit of ", limit, " bytes"));
  }
  return count;
}

// Reads the decimal digits at spec[i...], saturating far above any limit instead of overflowing.
int64_t ReadCount(const std::string& spec, size_t& i) {
  int64_t count = 0;
  while (i < spec.size() && std::isdigit(static_cast<unsigned char>(spec[i]))) {
    count = std::min<int64_t>(count * 10 + (spec[i++] - '0'), int64_t{1} << 50);
  }
  return count;
}

// Python's format() of one value with a format spec ("", ">10", ".2f", "d", "x"...).
std::string FormatSpec(Renderer& renderer, const Value& value, const std::string& spec, SourceLocation location) {
  if (spec.empty()) return value.ToString();
  size_t i = 0;
  char fill = ' ';
  char align = '\0';
  if (spec.size() >= 2 && std::strchr("<>^=", spec[1]) != nullptr) {
    fill = spec[0];
    align = spec[1];
    i = 2;
  } else if (std::strchr("<>^=", spec[0]) != nullptr) {
    align = spec[0];
    i = 1;
  }
  char sign = '\0';
  if (i < spec.size() && std::strchr("+- ", spec[i]) != nullptr) sign = spec[i++];
  if (i < spec.size() && spec[i] == '0') {
    fill = '0';
    if (!align) align = '=';
    ++i;
  }
  const int64_t width = CheckedCount(renderer, ReadCount(spec, i), location, "format width");
  bool thousands = false;
  if (i < spec.size() && spec[i] == ',') {
    thousands = true;
    ++i;
  }
  int64_t precision = -1;
  if (i < spec.size() && spec[i] == '.') {
    ++i;
    precision = CheckedCount(renderer, ReadCount(spec, i), location, "format precision");
  }
  char type = i < spec.size() ? spec[i++] : '\0';
  if (i != spec.size()) renderer.Fail(location, "unsupported format specifier '" + spec + "'");
  std::string body;
  bool numeric = value.IsNumber();
  if (type == 'f' || type == 'F' || type == 'e' || type == 'E' || type == '%' || (type == '\0' && value.IsFloat() && precision >= 0)) {
    if (!numeric) renderer.Fail(location, "Unknown format code '" + std::string(1, type) + "' for object of type '" + PythonTypeName(value) + "'");
    double number = value.AsDouble() * (type == '%' ? 100 : 1);
    const int digits = static_cast<int>(precision < 0 ? 6 : precision);
    const char conversion = type == '\0' ? 'g' : type == '%' ? 'f' : type;
    const char format[] = {'%', '.', '*', conversion, '\0'};
    body.resize(std::snprintf(nullptr, 0, format, digits, number));
    std::snprintf(body.data(), body.size() + 1, format, digits, number);
    if (type == '%') body += '%';
  } else if (type == 'd' || type == 'x' || type == 'X' || type == 'o' || type == 'b') {
    if (!value.IsInt() && !value.IsBool()) renderer.Fail(location, "Unknown format code '" + std::string(1, type) + "' for object of type '" + PythonTypeName(value) + "'");
    int64_t number = value.AsInt();
    if (type == 'd') {
      body = std::to_string(number);
    } else {
      std::string digits;
      uint64_t magnitude = number < 0 ? -static_cast<uint64_t>(number) : number;
      int base = type == 'o' ? 8 : type == 'b' ? 2 : 16;
      const char* alphabet = type == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
      do {
        digits.insert(digits.begin(), alphabet[magnitude % base]);
        magnitude /= base;
      } while (magnitude > 0);
      body = (number < 0 ? "-" : "") + digits;
    }
  } else if (type == 's' || type == '\0') {
    body = value.ToString();
    if (precision >= 0) body = EncodeUtf8(DecodeUtf8(body), 0, precision);
  } else {
    renderer.Fail(location, "unsupported format type '" + std::string(1, type) + "'");
  }
  if (thousands && numeric) {
    // Group the integer digits in threes: 1234567.5 -> 1,234,567.5
    size_t digits_begin = (!body.empty() && body[0] == '-') ? 1 : 0;
    size_t digits_end = body.find_first_not_of("0123456789", digits_begin);
    if (digits_end == std::string::npos) digits_end = body.size();
    for (size_t position = digits_end; position > digits_begin + 3; position -= 3) body.insert(position - 3, ",");
  }
  if (numeric && sign == '+' && !body.empty() && body[0] != '-') body = "+" + body;
  if (numeric && sign == ' ' && !body.empty() && body[0] != '-') body = " " + body;
  const auto length = static_cast<int64_t>(DecodeUtf8(body).size());
  if (length >= width) return body;
  const int64_t padding = width - length;
  if (!align) align = numeric ? '>' : '<';
  std::string fill_text(1, fill);
  auto pad = [&](int64_t count) {
    std::string out;
    for (int64_t k = 0; k < count; ++k) out += fill_text;
    return out;
  };
  switch (align) {
    case '<': return body + pad(padding);
    case '>': return pad(padding) + body;
    case '^': return pad(padding / 2) + body + pad(padding - padding / 2);
    default: {
      size_t sign_length = (!body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) ? 1 : 0;
      return body.substr(0, sign_length) + pad(padding) + body.substr(sign_length);
    }
  }
}

// Python's str.format with positional and keyword arguments.
std::string StrFormat(Renderer& renderer, const std::string& format, CallArguments& arguments, SourceLocation location) {
  std::string out;
  size_t automatic = 0;
  size_t i = 0;
  while (i < format.size()) {
    char c = format[i];
    if (c == '{') {
      if (i + 1 < format.size() && format[i + 1] == '{') {
        out += '{';
        i += 2;
        continue;
      }
      size_t close = format.find('}', i);
      if (close == std::string::npos) renderer.Fail(location, "Single '{' encountered in format string");
      std::string field = format.substr(i + 1, close - i - 1);
      std::string spec;
      char conversion = '\0';
      size_t colon = field.find(':');
      if (colon != std::string::npos) {
        spec = field.substr(colon + 1);
        field.resize(colon);
      }
      size_t bang = field.find('!');
      if (bang != std::string::npos) {
        conversion = bang + 1 < field.size() ? field[bang + 1] : '\0';
        field.resize(bang);
      }
      // field: "", index, or name, followed by .attr or [key] parts
      size_t part_start = field.find_first_of(".[");
      std::string head = field.substr(0, part_start);
      Value value;
      if (head.empty()) {
        if (automatic >= arguments.positional.size()) renderer.Fail(location, "Replacement index " + std::to_string(automatic) + " out of range for positional args tuple");
        value = arguments.positional[automatic++];
      } else if (std::all_of(head.begin(), head.end(), [](char d) { return std::isdigit(static_cast<unsigned char>(d)); })) {
        size_t index = std::stoul(head);
        if (index >= arguments.positional.size()) renderer.Fail(location, "Replacement index " + head + " out of range for positional args tuple");
        value = arguments.positional[index];
      } else {
        bool found = false;
        for (auto& [keyword, keyword_value] : arguments.keyword) {
          if (keyword == head) {
            value = keyword_value;
            found = true;
          }
        }
        if (!found) renderer.Fail(location, "KeyError: '" + head + "' in str.format");
      }
      while (part_start != std::string::npos && part_start < field.size()) {
        if (field[part_start] == '.') {
          size_t next = field.find_first_of(".[", part_start + 1);
          value = renderer.GetAttribute(value, field.substr(part_start + 1, next == std::string::npos ? std::string::npos : next - part_start - 1), location);
          part_start = next;
        } else {
          size_t end = field.find(']', part_start);
          if (end == std::string::npos) renderer.Fail(location, "Missing ']' in format string");
          std::string key = field.substr(part_start + 1, end - part_start - 1);
          bool numeric = !key.empty() && std::all_of(key.begin(), key.end(), [](char d) { return std::isdigit(static_cast<unsigned char>(d)); });
          value = renderer.GetItem(value, numeric ? Value(static_cast<int64_t>(std::stoll(key))) : Value(key), location);
          part_start = end + 1;
        }
      }
      if (conversion == 'r') value = Value(value.Repr());
      if (conversion == 's') value = Value(value.ToString());
      out += FormatSpec(renderer, value, spec, location);
      i = close + 1;
    } else if (c == '}') {
      if (i + 1 < format.size() && format[i + 1] == '}') {
        out += '}';
        i += 2;
        continue;
      }
      renderer.Fail(location, "Single '}' encountered in format string");
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

std::string StrftimeNow(const std::string& format) {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  if (format.empty()) return "";
  std::vector<char> buffer(format.size() * 8 + 256);
  size_t written = std::strftime(buffer.data(), buffer.size(), format.c_str(), &local);
  return std::string(buffer.data(), written);
}

Value MakeNamespace(Renderer& renderer, CallArguments& arguments, SourceLocation location) {
  auto ns = std::make_shared<Namespace>();
  auto add = [&](const std::string& name, const Value& value) {
    if (!name.empty() && name[0] == '_') {
      renderer.Fail(location, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + name +
                                  "'. Please rename the attribute.");
    }
    for (auto& [existing, slot] : ns->attributes) {
      if (existing == name) {
        slot = value;
        return;
      }
    }
    ns->attributes.emplace_back(name, value);
  };
  if (arguments.positional.size() > 1) renderer.Fail(location, "namespace() takes at most 1 positional argument");
  if (arguments.positional.size() == 1) {
    const Value& initial = arguments.positional[0];
    if (!initial.IsDict()) renderer.Fail(location, "namespace() positional argument must be a dict");
    for (const auto& [key, value] : initial.AsDict()) add(key.ToString(), value);
  }
  for (auto& [keyword, value] : arguments.keyword) add(keyword, value);
  return Value::FromNamespace(ns);
}

const std::vector<std::string>& UnsafeMethods(const Value& object) {
  static const std::vector<std::string> kList = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};
  static const std::vector<std::string> kDict = {"clear", "pop", "popitem", "setdefault", "update"};
  static const std::vector<std::string> kNone;
  if (object.IsList()) return kList;
  if (object.IsDict()) return kDict;
  return kNone;
}

int64_t IntArgument(Renderer& renderer, const Value& value, SourceLocation location, const std::string& what) {
  if (!value.IsInt() && !value.IsBool()) renderer.Fail(location, what + " must be an integer, not " + PythonTypeName(value));
  return value.AsInt();
}

const std::string& StringArgument(Renderer& renderer, const Value& value, SourceLocation location, const std::string& what) {
  if (!value.IsString()) renderer.Fail(location, what + " must be str, not " + PythonTypeName(value));
  return value.AsString();
}

bool StartsOrEndsWith(Renderer& renderer, const std::string& text, const Value& affix, bool ends, SourceLocation location) {
  if (affix.IsSequence()) {
    for (const Value& item : affix.AsList()) {
      if (StartsOrEndsWith(renderer, text, item, ends, location)) return true;
    }
    return false;
  }
  const std::string& piece = StringArgument(renderer, affix, location, ends ? "endswith first arg" : "startswith first arg");
  if (piece.size() > text.size()) return false;
  return ends ? text.compare(text.size() - piece.size(), piece.size(), piece) == 0 : text.compare(0, piece.size(), piece) == 0;
}

int64_t FindCodePoint(const std::string& text, const std::string& needle, bool reverse) {
  size_t found = reverse ? text.rfind(needle) : text.find(needle);
  if (found == std::string::npos) return -1;
  return static_cast<int64_t>(DecodeUtf8(std::string_view(text).substr(0, found)).size());
}

Value StringMethod(Renderer& renderer, const std::string& text, const std::string& name, CallArguments& arguments, SourceLocation location) {
  auto signature = [&](std::vector<std::string> names) { return Signature(renderer, location, "str." + name, arguments, std::move(names)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Signature args = signature({"chars"});
    Value characters = args.Get(0, Value::None());
    if (!characters.IsString() && !characters.IsNone()) renderer.Fail(location, name + " arg must be None or str");
    return Value(Strip(text, characters, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Signature args = signature({"sep", "maxsplit"});
    Value separator = args.Get(0, Value::None());
    if (!separator.IsString() && !separator.IsNone()) {
      renderer.Fail(location, "must be str or None, not " + PythonTypeName(separator));
    }
    if (separator.IsString() && separator.AsString().empty()) renderer.Fail(location, "empty separator");
    return Value::FromList(Split(text, separator, IntArgument(renderer, args.Get(1, Value(-1)), location, "maxsplit"), name == "rsplit"));
  }
  if (name == "splitlines") {
    List lines;
    for (auto& line : SplitLines(text)) lines.emplace_back(std::move(line));
    return Value::FromList(std::move(lines));
  }
  if (name == "startswith" || name == "endswith") {
    Signature args = signature({"prefix"});
    return Value(StartsOrEndsWith(renderer, text, args.Get(0), name == "endswith", location));
  }
  if (name == "upper") return Value(ToUpperUnicode(text));
  if (name == "lower" || name == "casefold") return Value(ToLowerUnicode(text));
  if (name == "title") return Value(PythonTitle(text));
  if (name == "capitalize") return Value(PythonCapitalize(text));
  if (name == "replace") {
    Signature args = signature({"old", "new", "count"});
    return Value(Replace(text, StringArgument(renderer, args.Get(0), location, "replace() argument 1"),
                         StringArgument(renderer, args.Get(1), location, "replace() argument 2"),
                         IntArgument(renderer, args.Get(2, Value(-1)), location, "count")));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    Signature args = signature({"sub"});
    int64_t found = FindCodePoint(text, StringArgument(renderer, args.Get(0), location, "must be str"), name[0] == 'r');
    if (found < 0 && (name == "index" || name == "rindex")) renderer.Fail(location, "substring not found");
    return Value(found);
  }
  if (name == "count") {
    Signature args = signature({"sub"});
    const std::string& needle = StringArgument(renderer, args.Get(0), location, "must be str");
    if (needle.empty()) return Value(static_cast<int64_t>(DecodeUtf8(text).size() + 1));
    int64_t count = 0;
    for (size_t found = text.find(needle); found != std::string::npos; found = text.find(needle, found + needle.size())) ++count;
    return Value(count);
  }
  if (name == "join") {
    Signature args = signature({"iterable"});
    std::string out;
    List items = Iterate(args.Get(0), location);
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].IsString()) renderer.Fail(location, absl::StrCat("sequence item ", i, ": expected str instance, ", PythonTypeName(items[i]), " found"));
      if (i > 0) out += text;
      out += items[i].AsString();
    }
    return Value(std::move(out));
  }
  if (name == "format") return Value(StrFormat(renderer, text, arguments, location));
  if (name == "removeprefix" || name == "removesuffix") {
    Signature args = signature({"affix"});
    const std::string& affix = StringArgument(renderer, args.Get(0), location, name + "() argument");
    if (name == "removeprefix" && text.compare(0, affix.size(), affix) == 0) return Value(text.substr(affix.size()));
    if (name == "removesuffix" && !affix.empty() && affix.size() <= text.size() && text.compare(text.size() - affix.size(), affix.size(), affix) == 0) {
      return Value(text.substr(0, text.size() - affix.size()));
    }
    return Value(text);
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    Signature args = signature({"width", "fillchar"});
    int64_t width = CheckedCount(renderer, IntArgument(renderer, args.Get(0), location, "width"), location, "width");
    std::string fill = args.Get(1, Value(" ")).ToString();
    int64_t length = static_cast<int64_t>(DecodeUtf8(text).size());
    if (width <= length) return Value(text);
    int64_t padding = width - length;
    int64_t left = name == "ljust" ? 0 : name == "rjust" ? padding : padding / 2 + (padding & width & 1);
    std::string out;
    for (int64_t k = 0; k < left; ++k) out += fill;
    out += text;
    for (int64_t k = 0; k < padding - left; ++k) out += fill;
    return Value(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "isupper" || name == "islower" ||
      name == "isnumeric" || name == "isdecimal") {
    std::vector<char32_t> code_points = DecodeUtf8(text);
    if (code_points.empty()) return Value(false);
    if (name == "isupper" || name == "islower") {
      bool any_cased = false;
      for (char32_t c : code_points) {
        if (name == "isupper" ? u_islower(c) || u_istitle(c) : u_isupper(c) || u_istitle(c)) return Value(false);
        if (IsCased(c)) any_cased = true;
      }
      return Value(any_cased);
    }
    for (char32_t c : code_points) {
      bool ok = name == "isspace" ? IsPythonSpace(c)
                : name == "isalpha" ? u_isalpha(c)
                : name == "isalnum" ? u_isalnum(c)
                                    : u_isdigit(c);
      if (!ok) return Value(false);
    }
    return Value(true);
  }
  if (name == "zfill") {
    Signature args = signature({"width"});
    int64_t width = CheckedCount(renderer, IntArgument(renderer, args.Get(0), location, "width"), location, "width");
    int64_t length = static_cast<int64_t>(DecodeUtf8(text).size());
    if (width <= length) return Value(text);
    size_t sign = (!text.empty() && (text[0] == '-' || text[0] == '+')) ? 1 : 0;
    return Value(text.substr(0, sign) + std::string(width - length, '0') + text.substr(sign));
  }
  if (name == "partition" || name == "rpartition") {
    Signature args = signature({"sep"});
    const std::string& separator = StringArgument(renderer, args.Get(0), location, "sep");
    size_t found = name == "partition" ? text.find(separator) : text.rfind(separator);
    if (found == std::string::npos) {
      return name == "partition" ? Value::FromTuple({Value(text), Value(""), Value("")}) : Value::FromTuple({Value(""), Value(""), Value(text)});
    }
    return Value::FromTuple({Value(text.substr(0, found)), Value(separator), Value(text.substr(found + separator.size()))});
  }
  if (name == "swapcase") {
    std::string out;
    for (char32_t c : DecodeUtf8(text)) {
      std::string one = MapCodePoint(c, false);
      out += u_isupper(c) ? ToLowerUnicode(one) : u_islower(c) ? ToUpperUnicode(one) : one;
    }
    return Value(std::move(out));
  }
  renderer.Fail(location, "str has no method '" + name + "'");
}

const std::vector<std::string> kStringMethods = {
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "upper", "lower", "casefold", "title",
    "capitalize", "replace", "find", "rfind", "index", "rindex", "count", "join", "format", "removeprefix", "removesuffix", "center",
    "ljust", "rjust", "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower", "isnumeric", "isdecimal", "zfill", "partition",
    "rpartition", "swapcase"};

}  // namespace

Value BoundMethod(Renderer& renderer, const Value& object, const std::string& name, SourceLocation location) {
  if (object.IsString()) {
    if (std::find(kStringMethods.begin(), kStringMethods.end(), name) == kStringMethods.end()) return Value::Undefined();
    Renderer* owner = &renderer;
    return Value::FromFunction("str." + name, [owner, object, name, location](CallArguments& arguments) {
      return StringMethod(*owner, object.AsString(), name, arguments, location);
    });
  }
  const std::vector<std::string>& unsafe = UnsafeMethods(object);
  if (std::find(unsafe.begin(), unsafe.end(), name) != unsafe.end()) {
    // The sandbox hands back an undefined value that fails only when used (called, iterated...).
    return Value::Undefined("access to attribute '" + name + "' of '" + PythonTypeName(object) + "' object is unsafe.");
  }
  Renderer* owner = &renderer;
  if (object.IsDict()) {
    if (name == "items" || name == "keys" || name == "values") {
      return Value::FromFunction("dict." + name, [object, name](CallArguments&) {
        List out;
        for (const auto& [key, item] : object.AsDict()) {
          if (name == "items") {
            out.push_back(Value::FromTuple({key, item}));
          } else {
            out.push_back(name == "keys" ? key : item);
          }
        }
        return Value::FromListView(std::move(out), "dict_" + name);
      });
    }
    if (name == "get") {
      return Value::FromFunction("dict.get", [owner, object, location](CallArguments& arguments) {
        Signature args(*owner, location, "dict.get", arguments, {"key", "default"});
        const Value* found = object.FindKey(args.Get(0));
        return found ? *found : args.Get(1, Value::None());
      });
    }
    if (name == "copy") return Value::FromFunction("dict.copy", [object](CallArguments&) { return object; });
    return Value::Undefined();
  }
  if (object.IsSequence()) {
    if (name == "index" || name == "count") {
      return Value::FromFunction("list." + name, [owner, object, name, location](CallArguments& arguments) {
        Signature args(*owner, location, "list." + name, arguments, {"value"});
        Value needle = args.Get(0);
        int64_t count = 0;
        const List& items = object.AsList();
        for (size_t i = 0; i < items.size(); ++i) {
          if (items[i].Equals(needle)) {
            if (name == "index") return Value(static_cast<int64_t>(i));
            ++count;
          }
        }
        if (name == "index") owner->Fail(location, needle.Repr() + " is not in list");
        return Value(count);
      });
    }
    if (name == "copy" && object.IsList()) return Value::FromFunction("list.copy", [object](CallArguments&) { return object; });
  }
  return Value::Undefined();
}

std::string ToJson(const Value& value, bool ensure_ascii, const Value& indent, const Value& separators, bool sort_keys,
                   SourceLocation location) {
  JsonLayout layout;
  layout.ensure_ascii = ensure_ascii;
  layout.sort_keys = sort_keys;
  if (indent.IsInt() || indent.IsBool()) {
    layout.indent = std::string(std::max<int64_t>(0, indent.AsInt()), ' ');
  } else if (indent.IsString()) {
    layout.indent = indent.AsString();
  } else if (!indent.IsNone() && !indent.IsUndefined()) {
    throw TemplateError(TemplateError::Kind::kRuntime, location, "tojson: indent must be an int or a str");
  }
  layout.item_separator = layout.indent ? "," : ", ";
  layout.key_separator = ": ";
  if (separators.IsSequence()) {
    if (separators.AsList().size() != 2 || !separators.AsList()[0].IsString() || !separators.AsList()[1].IsString()) {
      throw TemplateError(TemplateError::Kind::kRuntime, location, "tojson: separators must be a pair of strings");
    }
    layout.item_separator = separators.AsList()[0].AsString();
    layout.key_separator = separators.AsList()[1].AsString();
  }
  std::string out;
  WriteJson(value, layout, 0, out, location);
  return out;
}

std::string FormatPercent(Renderer& renderer, const std::string& format, const Value& arguments, SourceLocation location) {
  List values = arguments.IsTuple() ? arguments.AsList() : List{arguments};
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out += format[i];
      continue;
    }
    if (++i >= format.size()) renderer.Fail(location, "incomplete format");
    Value value;
    if (format[i] == '(') {
      size_t close = format.find(')', i);
      if (close == std::string::npos || !arguments.IsDict()) renderer.Fail(location, "format requires a mapping");
      const Value* found = arguments.FindKey(Value(format.substr(i + 1, close - i - 1)));
      if (found == nullptr) renderer.Fail(location, "KeyError: '" + format.substr(i + 1, close - i - 1) + "'");
      value = *found;
      i = close + 1;
    }
    std::string flags;
    while (i < format.size() && std::strchr("-+ 0#", format[i]) != nullptr) flags += format[i++];
    const size_t width_begin = i;
    CheckedCount(renderer, ReadCount(format, i), location, "format width");
    const std::string width = format.substr(width_begin, i - width_begin);
    std::string precision;
    if (i < format.size() && format[i] == '.') {
      ++i;
      precision = std::to_string(CheckedCount(renderer, ReadCount(format, i), location, "format precision"));
    }
    if (i >= format.size()) renderer.Fail(location, "incomplete format");
    char type = format[i];
    if (type == '%') {
      out += '%';
      continue;
    }
    if (value.IsUndefined() && !arguments.IsDict()) {
      if (next >= values.size()) renderer.Fail(location, "not enough arguments for format string");
      value = values[next++];
    }
    std::string spec;
    std::string align = flags.find('-') != std::string::npos ? "<" : "";
    std::string sign = flags.find('+') != std::string::npos ? "+" : flags.find(' ') != std::string::npos ? " " : "";
    std::string zero = flags.find('0') != std::string::npos && align.empty() ? "0" : "";
    std::string precision_spec = precision.empty() ? "" : "." + precision;
    switch (type) {
      case 's': out += FormatSpec(renderer, Value(value.ToString()), align + width + precision_spec, location); break;
      case 'r': out += FormatSpec(renderer, Value(value.Repr()), align + width + precision_spec, location); break;
      case 'd':
      case 'i':
      case 'u': {
        if (!value.IsNumber()) renderer.Fail(location, "%" + std::string(1, type) + " format: a real number is required, not " + PythonTypeName(value));
        Value integer(value.IsFloat() ? static_cast<int64_t>(std::trunc(value.AsDouble())) : value.AsInt());
        out += FormatSpec(renderer, integer, align + sign + zero + width + "d", location);
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G':
        if (!value.IsNumber()) renderer.Fail(location, "must be real number, not " + PythonTypeName(value));
        if (type == 'g' || type == 'G') {
          const std::string conversion = "%" + flags + width + (precision.empty() ? "" : "." + precision) + type;
          std::string formatted(std::snprintf(nullptr, 0, conversion.c_str(), value.AsDouble()), '\0');
          std::snprintf(formatted.data(), formatted.size() + 1, conversion.c_str(), value.AsDouble());
          out += formatted;
        } else {
          out += FormatSpec(renderer, Value(value.AsDouble()), align + sign + zero + width + (precision.empty() ? ".6" : precision_spec) + std::string(1, type), location);
        }
        break;
      case 'x':
      case 'X':
      case 'o':
        if (!value.IsInt() && !value.IsBool()) renderer.Fail(location, "%" + std::string(1, type) + " format: an integer is required, not " + PythonTypeName(value));
        out += FormatSpec(renderer, value, align + sign + zero + width + std::string(1, type), location);
        break;
      default:
        renderer.Fail(location, "unsupported format character '" + std::string(1, type) + "'");
    }
  }
  if (!arguments.IsDict() && next < values.size()) renderer.Fail(location, "not all arguments converted during string formatting");
  return out;
}

std::vector<std::pair<std::string, Value>> MakeGlobals(Renderer& renderer) {
  Renderer* owner = &renderer;
  SourceLocation unknown{0, 0};  // CallValue fills in the call's location
  std::vector<std::pair<std::string, Value>> globals;
  globals.emplace_back("raise_exception", Value::FromFunction("raise_exception", [unknown](CallArguments& arguments) -> Value {
    std::string message = arguments.positional.empty() ? "" : arguments.positional[0].ToString();
    for (auto& [keyword, value] : arguments.keyword) {
      if (keyword == "message") message = value.ToString();
    }
    throw TemplateError(TemplateError::Kind::kRaised, unknown, message);
  }));
  globals.emplace_back("strftime_now", Value::FromFunction("strftime_now", [owner, unknown](CallArguments& arguments) -> Value {
    Signature args(*owner, unknown, "strftime_now", arguments, {"format"});
    return Value(StrftimeNow(StringArgument(*owner, args.Get(0), unknown, "strftime_now() format")));
  }));
  globals.emplace_back("namespace", Value::FromFunction("namespace", [owner, unknown](CallArguments& arguments) {
    return MakeNamespace(*owner, arguments, unknown);
  }));
  globals.emplace_back("dict", Value::FromFunction("dict", [owner, unknown](CallArguments& arguments) {
    Dict items;
    auto put = [&](const Value& key, const Value& value) {
      for (auto& [existing, slot] : items) {
        if (existing.Equals(key)) {
          slot = value;
          return;
        }
      }
      items.emplace_back(key, value);
    };
    if (arguments.positional.size() > 1) owner->Fail(unknown, "dict expected at most 1 argument");
    if (!arguments.positional.empty()) {
      const Value& initial = arguments.positional[0];
      if (initial.IsDict()) {
        for (const auto& [key, value] : initial.AsDict()) put(key, value);
      } else {
        for (const Value& pair : Iterate(initial, unknown)) {
          if (!pair.IsSequence() || pair.AsList().size() != 2) owner->Fail(unknown, "dictionary update sequence element has wrong length");
          put(pair.AsList()[0], pair.AsList()[1]);
        }
      }
    }
    for (auto& [keyword, value] : arguments.keyword) put(Value(keyword), value);
    return Value::FromDict(std::move(items));
  }));
  globals.emplace_back("range", Value::FromFunction("range", [owner, unknown](CallArguments& arguments) {
    std::vector<int64_t> bounds;
    for (const Value& argument : arguments.positional) bounds.push_back(IntArgument(*owner, argument, unknown, "range() argument"));
    if (bounds.empty() || bounds.size() > 3 || !arguments.keyword.empty()) owner->Fail(unknown, "range expected 1 to 3 integer arguments");
    int64_t start = bounds.size() == 1 ? 0 : bounds[0];
    int64_t stop = bounds.size() == 1 ? bounds[0] : bounds[1];
    int64_t step = bounds.size() == 3 ? bounds[2] : 1;
    if (step == 0) owner->Fail(unknown, "range() arg 3 must not be zero");
    int64_t count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0) : (start > stop ? (start - stop - step - 1) / -step : 0);
    if (count > owner->limits().max_range_items) {
      throw TemplateError(TemplateError::Kind::kLimit, unknown,
                          absl::StrCat("range() of ", count, " items exceeds the limit of ", owner->limits().max_range_items));
    }
    List items;
    items.reserve(count);
    for (int64_t k = 0; k < count; ++k) items.emplace_back(start + k * step);
    std::string repr = step == 1 ? absl::StrCat("range(", start, ", ", stop, ")") : absl::StrCat("range(", start, ", ", stop, ", ", step, ")");
    return Value::FromListView(std::move(items), std::move(repr));
  }));
  return globals;
}

// ---- filters -----------------------------------------------------------------------------------

Value Renderer::CallFilter(const std::string& name, const Value& subject, CallArguments& arguments, SourceLocation location) {
  auto signature = [&](std::vector<std::string> names) { return Signature(*this, location, name, arguments, std::move(names)); };
  auto text_of = [&](const Value& value) { return value.ToString(); };
  if (name == "tojson") {
    Signature args = signature({"ensure_ascii", "indent", "separators", "sort_keys"});
    return Value(ToJson(subject, args.Get(0, Value(false)).Truthy(), args.Get(1, Value::None()), args.Get(2, Value::None()),
                        args.Get(3, Value(false)).Truthy(), location));
  }
  if (name == "trim") {
    Signature args = signature({"chars"});
    Value characters = args.Get(0, Value::None());
    if (!characters.IsString() && !characters.IsNone() && !characters.IsUndefined()) Fail(location, "strip arg must be None or str");
    return Value(Strip(text_of(subject), characters, true, true));
  }
  if (name == "upper") return Value(ToUpperUnicode(text_of(subject)));
  if (name == "lower") return Value(ToLowerUnicode(text_of(subject)));
  if (name == "capitalize") return Value(PythonCapitalize(text_of(subject)));
  if (name == "title") {
    // jinja2's do_title: split before runs of [-\s({\[<], upper-case each piece's first character.
    std::vector<char32_t> code_points = DecodeUtf8(text_of(subject));
    auto is_separator = [](char32_t c) { return IsPythonSpace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
    std::string out;
    size_t i = 0;
    while (i < code_points.size()) {
      size_t start = i;
      bool separators = is_separator(code_points[i]);
      while (i < code_points.size() && is_separator(code_points[i]) == separators) ++i;
      if (separators) {
        out += EncodeUtf8(code_points, start, i);
      } else {
        out += ToUpperUnicode(MapCodePoint(code_points[start], false)) + ToLowerUnicode(EncodeUtf8(code_points, start + 1, i));
      }
    }
    return Value(std::move(out));
  }
  if (name == "length" || name == "count") return Value(Length(*this, subject, location));
  if (name == "string") return Value(text_of(subject));
  if (name == "safe") return subject.IsString() ? subject : Value(text_of(subject));
  if (name == "e" || name == "escape" || name == "forceescape") return Value(HtmlEscape(text_of(subject)));
  if (name == "default" || name == "d") {
    Signature args = signature({"default_value", "boolean"});
    if (subject.IsUndefined() || (args.Get(1, Value(false)).Truthy() && !subject.Truthy())) return args.Get(0, Value(""));
    return subject;
  }
  if (name == "first" || name == "last") {
    List items = Iterate(subject, location);
    if (items.empty()) return Value::Undefined(std::string("No ") + name + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::FromList(Iterate(subject, location));
  if (name == "items") {
    if (subject.IsUndefined()) return Value::FromList({});
    if (!subject.IsDict()) Fail(location, "Can only get item pairs from a mapping.");
    List out;
    for (const auto& [key, item] : subject.AsDict()) out.push_back(Value::FromTuple({key, item}));
    return Value::FromList(std::move(out));
  }
  if (name == "join") {
    Signature args = signature({"d", "attribute"});
    std::string separator = args.Get(0, Value("")).ToString();
    std::string out;
    List items = Iterate(subject, location);
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += separator;
      out += text_of(GetAttributePath(*this, items[i], args.Get(1, Value::None()), location));
    }
    return Value(std::move(out));
  }
  if (name == "replace") {
    Signature args = signature({"old", "new", "count"});
    return Value(Replace(text_of(subject), text_of(args.Get(0)), text_of(args.Get(1)),
                         args.Get(2, Value::None()).IsNone() ? -1 : IntArgument(*this, args.Get(2), location, "count")));
  }
  if (name == "int") {
    Signature args = signature({"default", "base"});
    Value fallback = args.Get(0, Value(0));
    if (subject.IsInt()) return subject;
    if (subject.IsBool()) return Value(subject.AsInt());
    if (subject.IsFloat()) return std::isfinite(subject.AsDouble()) ? Value(static_cast<int64_t>(std::trunc(subject.AsDouble()))) : fallback;
    if (subject.IsString()) {
      std::string text = Strip(subject.AsString(), Value::None(), true, true);
      std::string digits;
      for (char c : text) {
        if (c != '_') digits += c;
      }
      int base = static_cast<int>(args.Get(1, Value(10)).AsInt());
      char* end = nullptr;
      errno = 0;
      long long parsed = std::strtoll(digits.c_str(), &end, base);
      if (!digits.empty() && end && *end == '\0' && errno == 0 && text.find("__") == std::string::npos && text.front() != '_' && text.back() != '_') {
        return Value(static_cast<int64_t>(parsed));
      }
      end = nullptr;
      double as_float = std::strtod(text.c_str(), &end);
      if (!text.empty() && end && *end == '\0' && std::isfinite(as_float) && text.find_first_of("xXpP") == std::string::npos) {
        return Value(static_cast<int64_t>(std::trunc(as_float)));
      }
    }
    return fallback;
  }
  if (name == "float") {
    Signature args = signature({"default"});
    if (subject.IsNumber()) return Value(subject.AsDouble());
    if (subject.IsString()) {
      std::string text = Strip(subject.AsString(), Value::None(), true, true);
      char* end = nullptr;
      double parsed = std::strtod(text.c_str(), &end);
      if (!text.empty() && end && *end == '\0' && text.find_first_of("xXpP") == std::string::npos) return Value(parsed);
    }
    return args.Get(0, Value(0.0));
  }
  if (name == "abs") {
    if (subject.IsFloat()) return Value(std::fabs(subject.AsDouble()));
    if (subject.IsInt() || subject.IsBool()) return Value(static_cast<int64_t>(std::llabs(subject.AsInt())));
    Fail(location, "bad operand type for abs(): '" + PythonTypeName(subject) + "'");
  }
  if (name == "round") {
    Signature args = signature({"precision", "method"});
    int64_t precision = IntArgument(*this, args.Get(0, Value(0)), location, "precision");
    std::string method = args.Get(1, Value("common")).ToString();
    if (method != "common" && method != "ceil" && method != "floor") Fail(location, "method must be common, ceil or floor");
    if (!subject.IsNumber()) Fail(location, "type " + PythonTypeName(subject) + " doesn't define __round__ method");
    if (method == "common") {
      if (subject.IsFloat()) return Value(PythonRound(subject.AsDouble(), precision));
      return Value(subject.AsInt());
    }
    double scale = std::pow(10.0, static_cast<double>(precision));
    double scaled = subject.AsDouble() * scale;
    return Value((method == "ceil" ? std::ceil(scaled) : std::floor(scaled)) / scale);
  }
  if (name == "map") {
    List out;
    List items = Iterate(subject, location);
    if (arguments.positional.empty()) {
      Signature args = signature({"attribute", "default"});
      for (const Value& item : items) {
        Value mapped = GetAttributePath(*this, item, args.Get(0, Value::None()), location);
        if (mapped.IsUndefined() && args.Has(1)) mapped = args.Get(1);
        out.push_back(mapped);
      }
    } else {
      std::string filter = text_of(arguments.positional[0]);
      for (const Value& item : items) {
        CallArguments rest;
        rest.positional.assign(arguments.positional.begin() + 1, arguments.positional.end());
        rest.keyword = arguments.keyword;
        out.push_back(CallFilter(filter, item, rest, location));
      }
    }
    return Value::FromList(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    bool lookup_attribute = name == "selectattr" || name == "rejectattr";
    bool keep_when = name == "select" || name == "selectattr";
    List items = Iterate(subject, location);
    size_t next = 0;
    Value attribute;
    if (lookup_attribute) {
      if (arguments.positional.empty()) Fail(location, name + " requires an attribute name");
      attribute = arguments.positional[next++];
    }
    std::optional<std::string> test;
    if (next < arguments.positional.size()) test = text_of(arguments.positional[next++]);
    List out;
    for (const Value& item : items) {
      Value candidate = lookup_attribute ? GetAttributePath(*this, item, attribute, location) : item;
      bool passed;
      if (test) {
        CallArguments rest;
        rest.positional.assign(arguments.positional.begin() + next, arguments.positional.end());
        rest.keyword = arguments.keyword;
        passed = CallTest(*test, candidate, rest, location);
      } else {
        passed = candidate.Truthy();
      }
      if (passed == keep_when) out.push_back(item);
    }
    return Value::FromList(std::move(out));
  }
  if (name == "unique") {
    Signature args = signature({"case_sensitive", "attribute"});
    bool case_sensitive = args.Get(0, Value(false)).Truthy();
    List out;
    List seen;
    for (const Value& item : Iterate(subject, location)) {
      Value key = GetAttributePath(*this, item, args.Get(1, Value::None()), location);
      if (!case_sensitive) key = IgnoreCase(key);
      bool duplicate = std::any_of(seen.begin(), seen.end(), [&](const Value& other) { return other.Equals(key); });
      if (!duplicate) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::FromList(std::move(out));
  }
  if (name == "sort") {
    Signature args = signature({"reverse", "case_sensitive", "attribute"});
    bool reverse = args.Get(0, Value(false)).Truthy();
    bool case_sensitive = args.Get(1, Value(false)).Truthy();
    List items = Iterate(subject, location);
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& item : items) {
      Value key = GetAttributePath(*this, item, args.Get(2, Value::None()), location);
      keyed.emplace_back(case_sensitive ? key : IgnoreCase(key), item);
    }
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
      return reverse ? LessThan(b.first, a.first, location) : LessThan(a.first, b.first, location);
    });
    List out;
    for (auto& [key, item] : keyed) out.push_back(item);
    return Value::FromList(std::move(out));
  }
  if (name == "groupby") {
    // jinja2's do_groupby: sort by the attribute (case-folded unless case_sensitive), group equal
    // neighbours; each group is a (grouper, list) named tuple whose grouper keeps the first item's case.
    Signature args = signature({"attribute", "default", "case_sensitive"});
    const Value attribute = args.Get(0, Value::None());
    const Value fallback = args.Get(1, Value::None());
    const bool case_sensitive = args.Get(2, Value(false)).Truthy();
    auto key_of = [&](const Value& item) {
      Value key = GetAttributePath(*this, item, attribute, location);
      if (key.IsUndefined() && !fallback.IsNone()) key = fallback;
      return key;
    };
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& item : Iterate(subject, location)) {
      Value key = key_of(item);
      keyed.emplace_back(case_sensitive ? key : IgnoreCase(key), item);
    }
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) { return LessThan(a.first, b.first, location); });
    List groups;
    for (size_t start = 0; start < keyed.size();) {
      size_t end = start + 1;
      while (end < keyed.size() && keyed[end].first.Equals(keyed[start].first)) ++end;
      List members;
      for (size_t i = start; i < end; ++i) members.push_back(keyed[i].second);
      Value grouper = case_sensitive ? keyed[start].first : key_of(keyed[start].second);
      groups.push_back(Value::FromNamedTuple({grouper, Value::FromList(std::move(members))}, {"grouper", "list"}));
      start = end;
    }
    return Value::FromList(std::move(groups));
  }
  if (name == "truncate") {
    // jinja2's do_truncate with the default policy leeway of 5 characters.
    Signature args = signature({"length", "killwords", "end", "leeway"});
    std::vector<char32_t> text = DecodeUtf8(text_of(subject));
    const int64_t length = IntArgument(*this, args.Get(0, Value(int64_t{255})), location, "truncate length");
    const bool killwords = args.Get(1, Value(false)).Truthy();
    const std::string end = text_of(args.Get(2, Value("...")));
    const int64_t leeway = IntArgument(*this, args.Get(3, Value(int64_t{5})), location, "truncate leeway");
    const int64_t end_length = static_cast<int64_t>(DecodeUtf8(end).size());
    if (length < end_length) Fail(location, absl::StrCat("expected length >= ", end_length, ", got ", length));
    if (leeway < 0) Fail(location, absl::StrCat("expected leeway >= 0, got ", leeway));
    if (static_cast<int64_t>(text.size()) <= length + leeway) return subject.IsString() ? subject : Value(text_of(subject));
    std::string kept = EncodeUtf8(text, 0, static_cast<size_t>(length - end_length));
    if (!killwords) {
      size_t space = kept.rfind(' ');
      if (space != std::string::npos) kept.resize(space);
    }
    return Value(kept + end);
  }
  if (name == "slice") {
    // jinja2's do_slice: `slices` columns, the first (length % slices) one item longer.
    Signature args = signature({"slices", "fill_with"});
    const int64_t slices = IntArgument(*this, args.Get(0, Value::None()), location, "slice count");
    if (slices <= 0) Fail(location, "slice count must be positive");
    const Value fill_with = args.Get(1, Value::None());
    List items = Iterate(subject, location);
    const int64_t length = static_cast<int64_t>(items.size());
    const int64_t per_slice = length / slices;
    const int64_t with_extra = length % slices;
    List out;
    int64_t offset = 0;
    for (int64_t number = 0; number < slices; ++number) {
      const int64_t start = offset + number * per_slice;
      if (number < with_extra) ++offset;
      const int64_t end = offset + (number + 1) * per_slice;
      List column(items.begin() + start, items.begin() + end);
      if (!fill_with.IsNone() && number >= with_extra) column.push_back(fill_with);
      out.push_back(Value::FromList(std::move(column)));
    }
    return Value::FromList(std::move(out));
  }
  if (name == "dictsort") {
    Signature args = signature({"case_sensitive", "by", "reverse"});
    if (!subject.IsDict()) Fail(location, "dictsort requires a mapping");
    bool case_sensitive = args.Get(0, Value(false)).Truthy();
    std::string by = args.Get(1, Value("key")).ToString();
    if (by != "key" && by != "value") Fail(location, "You can only sort by either \"key\" or \"value\"");
    bool reverse = args.Get(2, Value(false)).Truthy();
    List pairs;
    for (const auto& [key, item] : subject.AsDict()) pairs.push_back(Value::FromTuple({key, item}));
    std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& a, const Value& b) {
      size_t position = by == "key" ? 0 : 1;
      Value left = a.AsList()[position];
      Value right = b.AsList()[position];
      if (!case_sensitive) {
        left = IgnoreCase(left);
        right = IgnoreCase(right);
      }
      return reverse ? LessThan(right, left, location) : LessThan(left, right, location);
    });
    return Value::FromList(std::move(pairs));
  }
  if (name == "reverse") {
    if (subject.IsString()) {
      std::vector<char32_t> code_points = DecodeUtf8(subject.AsString());
      std::reverse(code_points.begin(), code_points.end());
      return Value(EncodeUtf8(code_points));
    }
    List items = Iterate(subject, location);
    std::reverse(items.begin(), items.end());
    return Value::FromList(std::move(items));
  }
  if (name == "indent") {
    Signature args = signature({"width", "first", "blank"});
    Value width = args.Get(0, Value(4));
    std::string indentation = width.IsString() ? width.AsString() : std::string(std::max<int64_t>(0, CheckedCount(*this, IntArgument(*this, width, location, "width"), location, "width")), ' ');
    bool first = args.Get(1, Value(false)).Truthy();
    bool blank = args.Get(2, Value(false)).Truthy();
    std::vector<std::string> lines = SplitLines(text_of(subject) + "\n");
    std::string out;
    if (blank) {
      for (size_t i = 0; i < lines.size(); ++i) {
        if (i > 0) out += "\n" + indentation;
        out += lines[i];
      }
    } else {
      out = lines.empty() ? "" : lines[0];
      for (size_t i = 1; i < lines.size(); ++i) out += "\n" + (lines[i].empty() ? "" : indentation + lines[i]);
    }
    if (first) out = indentation + out;
    return Value(std::move(out));
  }
  if (name == "center") {
    Signature args = signature({"width"});
    CallArguments forwarded;
    forwarded.positional.push_back(args.Get(0, Value(80)));
    return StringMethod(*this, text_of(subject), "center", forwarded, location);
  }
  if (name == "format") {
    if (!arguments.positional.empty() && !arguments.keyword.empty()) Fail(location, "can't handle positional and keyword arguments at the same time");
    Value format_arguments;
    if (!arguments.keyword.empty()) {
      Dict mapping;
      for (auto& [keyword, value] : arguments.keyword) mapping.emplace_back(Value(keyword), value);
      format_arguments = Value::FromDict(std::move(mapping));
    } else {
      format_arguments = Value::FromTuple(arguments.positional);
    }
    return Value(FormatPercent(*this, text_of(subject), format_arguments, location));
  }
  if (name == "wordcount") {
    int64_t words = 0;
    bool in_word = false;
    for (char32_t c : DecodeUtf8(text_of(subject))) {
      bool word = IsWordCharacter(c);
      if (word && !in_word) ++words;
      in_word = word;
    }
    return Value(words);
  }
  if (name == "sum") {
    Signature args = signature({"attribute", "start"});
    Value total = args.Get(1, Value(0));
    for (const Value& item : Iterate(subject, location)) {
      Value term = GetAttributePath(*this, item, args.Get(0, Value::None()), location);
      if (term.IsSequence() && total.IsSequence() && term.kind() == total.kind()) {
        List joined = total.AsList();
        joined.insert(joined.end(), term.AsList().begin(), term.AsList().end());
        total = total.IsList() ? Value::FromList(std::move(joined)) : Value::FromTuple(std::move(joined));
        continue;
      }
      if (!term.IsNumber() || !total.IsNumber()) Fail(location, "unsupported operand type(s) for +: '" + PythonTypeName(total) + "' and '" + PythonTypeName(term) + "'");
      total = (total.IsFloat() || term.IsFloat()) ? Value(total.AsDouble() + term.AsDouble()) : Value(total.AsInt() + term.AsInt());
    }
    return total;
  }
  if (name == "max" || name == "min") {
    Signature args = signature({"case_sensitive", "attribute"});
    bool case_sensitive = args.Get(0, Value(false)).Truthy();
    List items = Iterate(subject, location);
    if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
    Value best = items[0];
    Value best_key = GetAttributePath(*this, best, args.Get(1, Value::None()), location);
    if (!case_sensitive) best_key = IgnoreCase(best_key);
    for (size_t i = 1; i < items.size(); ++i) {
      Value key = GetAttributePath(*this, items[i], args.Get(1, Value::None()), location);
      if (!case_sensitive) key = IgnoreCase(key);
      if (name == "max" ? LessThan(best_key, key, location) : LessThan(key, best_key, location)) {
        best = items[i];
        best_key = key;
      }
    }
    return best;
  }
  if (name == "batch") {
    Signature args = signature({"linecount", "fill_with"});
    int64_t size = IntArgument(*this, args.Get(0), location, "linecount");
    if (size <= 0) Fail(location, "batch size must be positive");
    List out;
    List current;
    for (const Value& item : Iterate(subject, location)) {
      current.push_back(item);
      if (static_cast<int64_t>(current.size()) == size) {
        out.push_back(Value::FromList(std::move(current)));
        current.clear();
      }
    }
    if (!current.empty()) {
      if (args.Has(1) && !args.Get(1).IsNone()) {
        while (static_cast<int64_t>(current.size()) < size) current.push_back(args.Get(1));
      }
      out.push_back(Value::FromList(std::move(current)));
    }
    return Value::FromList(std::move(out));
  }
  if (name == "attr") {
    Signature args = signature({"name"});
    return GetAttribute(subject, text_of(args.Get(0)), location);
  }
  Fail(location, "no filter named '" + name + "' (or it is not supported in chat templates)");
}

// ---- tests -------------------------------------------------------------------------------------

bool Renderer::CallTest(const std::string& name, const Value& subject, CallArguments& arguments, SourceLocation location) {
  auto argument = [&](size_t index) -> Value {
    if (index < arguments.positional.size()) return arguments.positional[index];
    if (!arguments.keyword.empty() && index == 0) return arguments.keyword[0].second;
    Fail(location, "test '" + name + "' needs an argument");
  };
  if (name == "defined") return !subject.IsUndefined();
  if (name == "undefined") return subject.IsUndefined();
  if (name == "none") return subject.IsNone();
  if (name == "boolean") return subject.IsBool();
  if (name == "true") return subject.IsBool() && subject.AsBool();
  if (name == "false") return subject.IsBool() && !subject.AsBool();
  if (name == "integer") return subject.IsInt();
  if (name == "float") return subject.IsFloat();
  if (name == "number") return subject.IsNumber();
  if (name == "string") return subject.IsString();
  if (name == "mapping") return subject.IsDict();
  if (name == "iterable") return subject.IsUndefined() || subject.IsString() || subject.IsSequence() || subject.IsDict();
  if (name == "sequence") return subject.IsUndefined() || subject.IsString() || subject.IsSequence() || subject.IsDict();
  if (name == "callable") return subject.IsFunction();
  if (name == "escaped") return false;
  if (name == "filter" || name == "test") return false;
  if (name == "odd" || name == "even") {
    if (subject.IsUndefined()) ThrowUndefined(subject, location);
    if (!subject.IsNumber()) Fail(location, "unsupported operand type(s) for %: '" + PythonTypeName(subject) + "' and 'int'");
    if (subject.IsFloat()) {
      double remainder = std::fmod(std::fabs(subject.AsDouble()), 2.0);
      return name == "odd" ? remainder == 1.0 : remainder == 0.0;
    }
    bool odd = (subject.AsInt() % 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  if (name == "divisibleby") {
    Value divisor = argument(0);
    if (subject.IsUndefined()) ThrowUndefined(subject, location);
    if (!subject.IsNumber() || !divisor.IsNumber()) Fail(location, "divisibleby needs numbers");
    if (divisor.AsDouble() == 0) Fail(location, "integer division or modulo by zero");
    if (subject.IsFloat() || divisor.IsFloat()) return std::fmod(subject.AsDouble(), divisor.AsDouble()) == 0;
    return subject.AsInt() % divisor.AsInt() == 0;
  }
  if (name == "lower" || name == "upper") {
    std::string text = subject.ToString();
    CallArguments none;
    return StringMethod(*this, text, name == "lower" ? "islower" : "isupper", none, location).AsBool();
  }
  if (name == "sameas") {
    Value other = argument(0);
    if (subject.IsNone() || subject.IsBool() || subject.IsUndefined()) return subject.kind() == other.kind() && subject.Equals(other);
    return subject.kind() == other.kind() && subject.Equals(other) && (subject.IsNamespace() || subject.IsObject() || subject.IsFunction());
  }
  if (name == "in") return Compare("in", subject, argument(0), location);
  if (name == "eq" || name == "equalto" || name == "==") return subject.Equals(argument(0));
  if (name == "ne" || name == "!=") return !subject.Equals(argument(0));
  if (name == "lt" || name == "lessthan" || name == "<") return Compare("<", subject, argument(0), location);
  if (name == "le" || name == "<=") return Compare("<=", subject, argument(0), location);
  if (name == "gt" || name == "greaterthan" || name == ">") return Compare(">", subject, argument(0), location);
  if (name == "ge" || name == ">=") return Compare(">=", subject, argument(0), location);
  Fail(location, "no test named '" + name + "'");
}

}  // namespace flotilla::chat_template
