#include "services/preprocess/chat_template/value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace flotilla::chat_template {

namespace {
const std::string kEmptyHint;
}  // namespace

Value Value::Undefined(std::string hint) {
  Value value;
  if (!hint.empty()) value.string_ = std::make_shared<const std::string>(std::move(hint));
  return value;
}

Value Value::None() {
  Value value;
  value.kind_ = Kind::kNone;
  return value;
}

Value::Value(std::string value) : kind_(Kind::kString), string_(std::make_shared<const std::string>(std::move(value))) {}

Value Value::FromList(List items) {
  Value value;
  value.kind_ = Kind::kList;
  value.list_ = std::make_shared<const List>(std::move(items));
  return value;
}

Value Value::FromListView(List items, std::string repr_name) {
  Value value = FromList(std::move(items));
  value.string_ = std::make_shared<const std::string>(std::move(repr_name));
  return value;
}

Value Value::FromTuple(List items) {
  Value value = FromList(std::move(items));
  value.kind_ = Kind::kTuple;
  return value;
}

Value Value::FromNamedTuple(List items, std::vector<std::string> field_names) {
  Value value = FromTuple(std::move(items));
  value.field_names_ = std::make_shared<const std::vector<std::string>>(std::move(field_names));
  return value;
}

const Value* Value::FindField(const std::string& name) const {
  if (kind_ != Kind::kTuple || !field_names_) return nullptr;
  for (size_t i = 0; i < field_names_->size() && i < list_->size(); ++i) {
    if ((*field_names_)[i] == name) return &(*list_)[i];
  }
  return nullptr;
}

Value Value::FromDict(Dict items) {
  Value value;
  value.kind_ = Kind::kDict;
  value.dict_ = std::make_shared<const Dict>(std::move(items));
  return value;
}

Value Value::FromNamespace(std::shared_ptr<Namespace> ns) {
  Value value;
  value.kind_ = Kind::kNamespace;
  value.namespace_ = std::move(ns);
  return value;
}

Value Value::FromObject(std::shared_ptr<Object> object) {
  Value value;
  value.kind_ = Kind::kObject;
  value.object_ = std::move(object);
  return value;
}

Value Value::FromFunction(std::string name, Function function) {
  Value value;
  value.kind_ = Kind::kFunction;
  value.string_ = std::make_shared<const std::string>(std::move(name));
  value.function_ = std::make_shared<const Function>(std::move(function));
  return value;
}

Value Value::FromJson(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
      return None();
    case nlohmann::ordered_json::value_t::boolean:
      return Value(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value(static_cast<int64_t>(json.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float:
      return Value(json.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(FromJson(item));
      return FromList(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict items;
      items.reserve(json.size());
      for (const auto& [key, item] : json.items()) items.emplace_back(Value(key), FromJson(item));
      return FromDict(std::move(items));
    }
    default:
      return None();
  }
}

const std::string& Value::UndefinedHint() const { return string_ ? *string_ : kEmptyHint; }

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
    case Kind::kInt:
      return int_ != 0;
    case Kind::kFloat:
      return float_ != 0.0;
    case Kind::kString:
      return !string_->empty();
    case Kind::kList:
    case Kind::kTuple:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->empty();
    default:
      return true;
  }
}

bool Value::Equals(const Value& other) const {
  if (IsNumber() && other.IsNumber()) {
    if (kind_ == Kind::kFloat || other.kind_ == Kind::kFloat) return AsDouble() == other.AsDouble();
    return int_ == other.int_;
  }
  if (IsSequence() && other.IsSequence()) {
    if (kind_ != other.kind_) return false;
    if (list_->size() != other.list_->size()) return false;
    for (size_t i = 0; i < list_->size(); ++i) {
      if (!(*list_)[i].Equals((*other.list_)[i])) return false;
    }
    return true;
  }
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return *string_ == *other.string_;
    case Kind::kDict: {
      if (dict_->size() != other.dict_->size()) return false;
      for (const auto& [key, item] : *dict_) {
        const Value* found = other.FindKey(key);
        if (found == nullptr || !found->Equals(item)) return false;
      }
      return true;
    }
    case Kind::kNamespace:
      return namespace_ == other.namespace_;
    case Kind::kObject:
      return object_ == other.object_;
    case Kind::kFunction:
      return function_ == other.function_;
    default:
      return false;
  }
}

const Value* Value::FindKey(const Value& key) const {
  for (const auto& [candidate, item] : *dict_) {
    if (candidate.Equals(key)) return &item;
  }
  return nullptr;
}

std::string Value::ToString() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "";
    case Kind::kString:
      return *string_;
    default:
      return Repr();
  }
}

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return int_ ? "True" : "False";
    case Kind::kInt:
      return std::to_string(int_);
    case Kind::kFloat:
      return PythonFloatRepr(float_);
    case Kind::kString:
      return PythonStringRepr(*string_);
    case Kind::kList:
    case Kind::kTuple: {
      if (kind_ == Kind::kList && string_) {
        if (string_->rfind("range(", 0) == 0) return *string_;
        Value plain = FromList(*list_);
        return *string_ + "(" + plain.Repr() + ")";
      }
      std::string out = kind_ == Kind::kList ? "[" : "(";
      for (size_t i = 0; i < list_->size(); ++i) {
        if (i > 0) out += ", ";
        out += (*list_)[i].Repr();
      }
      if (kind_ == Kind::kTuple && list_->size() == 1) out += ",";
      out += kind_ == Kind::kList ? "]" : ")";
      return out;
    }
    case Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, item] : *dict_) {
        if (!first) out += ", ";
        first = false;
        out += key.Repr() + ": " + item.Repr();
      }
      return out + "}";
    }
    case Kind::kNamespace: {
      std::string out = "<Namespace {";
      bool first = true;
      for (const auto& [key, item] : namespace_->attributes) {
        if (!first) out += ", ";
        first = false;
        out += PythonStringRepr(key) + ": " + item.Repr();
      }
      return out + "}>";
    }
    case Kind::kObject:
      return "<" + object_->type_name + ">";
    case Kind::kFunction:
      return "<function " + *string_ + ">";
  }
  return "";
}

std::string Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool object";
    case Kind::kInt:
      return "int object";
    case Kind::kFloat:
      return "float object";
    case Kind::kString:
      return "str object";
    case Kind::kList:
      return "list object";
    case Kind::kTuple:
      return "tuple object";
    case Kind::kDict:
      return "dict object";
    case Kind::kNamespace:
      return "Namespace object";
    case Kind::kObject:
      return object_->type_name + " object";
    case Kind::kFunction:
      return "function object";
  }
  return "object";
}

std::string PythonFloatRepr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: fixed for 1e-4 <= |x| < 1e16, else scientific.
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  std::string scientific(buffer, result.ptr);
  bool negative = scientific[0] == '-';
  if (negative) scientific.erase(0, 1);
  size_t e_position = scientific.find('e');
  std::string mantissa = scientific.substr(0, e_position);
  int exponent = std::stoi(scientific.substr(e_position + 1));
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    int point = exponent + 1;  // digits before the decimal point
    if (point <= 0) {
      out += "0." + std::string(-point, '0') + digits;
    } else if (point >= static_cast<int>(digits.size())) {
      out += digits + std::string(point - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, point) + "." + digits.substr(point);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char exponent_text[16];
  std::snprintf(exponent_text, sizeof(exponent_text), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exponent_text;
}

bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

std::string PythonStringRepr(const std::string& text) {
  bool has_single = text.find('\'') != std::string::npos;
  bool has_double = text.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : DecodeUtf8(text)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0) || c == 0xad) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", static_cast<unsigned>(c));
      out += escaped;
    } else if (c == 0x2028 || c == 0x2029 || (c >= 0x200b && c <= 0x200f) || (c >= 0x202a && c <= 0x202e) ||
               (c >= 0x2060 && c <= 0x2064) || c == 0xfeff || (IsPythonSpace(c) && c != ' ')) {
      // Python prints separators and format characters escaped (str.isprintable is false for them).
      char escaped[12];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned>(c));
      out += escaped;
    } else {
      AppendUtf8(out, c);
    }
  }
  out += quote;
  return out;
}

std::vector<char32_t> DecodeUtf8(std::string_view text) {
  std::vector<char32_t> out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    unsigned char lead = static_cast<unsigned char>(text[i]);
    int length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xe ? 3 : (lead >> 3) == 0x1e ? 4 : 0;
    if (length == 0 || i + length > text.size()) {
      out.push_back(0xfffd);  // invalid input never reaches here from JSON; be total anyway
      ++i;
      continue;
    }
    char32_t code_point = length == 1 ? lead : length == 2 ? (lead & 0x1f) : length == 3 ? (lead & 0x0f) : (lead & 0x07);
    for (int k = 1; k < length; ++k) code_point = (code_point << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3f);
    out.push_back(code_point);
    i += length;
  }
  return out;
}

void AppendUtf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xc0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xe0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  }
}

std::string EncodeUtf8(const std::vector<char32_t>& code_points, size_t begin, size_t end) {
  std::string out;
  end = std::min(end, code_points.size());
  for (size_t i = begin; i < end; ++i) AppendUtf8(out, code_points[i]);
  return out;
}

}  // namespace flotilla::chat_template
