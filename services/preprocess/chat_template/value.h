// The values a chat template computes with, with Python's semantics as jinja2 gives them: Undefined
// (a missing name or attribute, which renders as "" but fails when looked into), None, bool, int,
// float, str, list, tuple, dict (insertion-ordered), namespace, and callables (macros, builtins,
// bound methods). Printing follows Python's str()/repr(), so `{{ [1, 'a'] }}` renders "[1, 'a']".
//
//   Value message = Value::FromJson(nlohmann::ordered_json::parse(R"({"role": "user"})"));
//   message.GetItem(Value("role")).ToString();  // "user"
//
// Lists, tuples and dicts are immutable once built (transformers renders in jinja2's immutable
// sandbox), so copies share storage. Namespaces are the one mutable kind. A Value is not
// thread-safe to mutate, but immutable values may be read from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace flotilla::chat_template {

class Value;

// Arguments of a call: positional then keyword, as Python passes them.
struct CallArguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

using Function = std::function<Value(CallArguments&)>;

using List = std::vector<Value>;
using Dict = std::vector<std::pair<Value, Value>>;

// A jinja2 namespace(): attributes that `{% set ns.name = ... %}` may assign, even inside loops.
struct Namespace {
  std::vector<std::pair<std::string, Value>> attributes;
};

// An object with named attributes (the `loop` variable): read-only from the template.
struct Object {
  std::string type_name;
  std::vector<std::pair<std::string, Value>> attributes;
};

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kNamespace, kObject, kFunction };

  Value() : kind_(Kind::kUndefined) {}
  static Value Undefined(std::string hint = "");
  static Value None();
  Value(bool value) : kind_(Kind::kBool), int_(value) {}
  Value(int value) : kind_(Kind::kInt), int_(value) {}
  Value(int64_t value) : kind_(Kind::kInt), int_(value) {}
  Value(double value) : kind_(Kind::kFloat), float_(value) {}
  Value(std::string value);
  Value(std::string_view value) : Value(std::string(value)) {}
  Value(const char* value) : Value(std::string(value)) {}
  static Value FromList(List items);
  static Value FromTuple(List items);
  // A list that prints as Python prints a view or a range: `dict_items([...])`, `range(0, 3)`.
  // `repr_name` is "dict_items", "dict_keys", "dict_values", or a whole "range(...)" repr.
  static Value FromListView(List items, std::string repr_name);
  // A tuple whose items are also attributes (Python's namedtuple; jinja2's groupby gives
  // (grouper, list) pairs). Prints as a plain tuple, as jinja2's _GroupTuple does.
  static Value FromNamedTuple(List items, std::vector<std::string> field_names);
  static Value FromDict(Dict items);
  static Value FromNamespace(std::shared_ptr<Namespace> ns);
  static Value FromObject(std::shared_ptr<Object> object);
  static Value FromFunction(std::string name, Function function);
  // JSON in, as json.loads would give it to the template (objects keep their key order).
  static Value FromJson(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool IsUndefined() const { return kind_ == Kind::kUndefined; }
  bool IsNone() const { return kind_ == Kind::kNone; }
  bool IsBool() const { return kind_ == Kind::kBool; }
  bool IsInt() const { return kind_ == Kind::kInt; }
  bool IsFloat() const { return kind_ == Kind::kFloat; }
  // int, float and bool are numbers, as in Python.
  bool IsNumber() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }
  bool IsString() const { return kind_ == Kind::kString; }
  bool IsList() const { return kind_ == Kind::kList; }
  bool IsTuple() const { return kind_ == Kind::kTuple; }
  bool IsSequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool IsDict() const { return kind_ == Kind::kDict; }
  bool IsNamespace() const { return kind_ == Kind::kNamespace; }
  bool IsObject() const { return kind_ == Kind::kObject; }
  bool IsFunction() const { return kind_ == Kind::kFunction; }

  bool AsBool() const { return int_ != 0; }
  int64_t AsInt() const { return int_; }
  // int, bool or float as a double.
  double AsDouble() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& AsString() const { return *string_; }
  const List& AsList() const { return *list_; }
  const Dict& AsDict() const { return *dict_; }
  Namespace& AsNamespace() const { return *namespace_; }
  const Object& AsObject() const { return *object_; }
  const Function& AsFunction() const { return *function_; }
  const std::string& FunctionName() const { return *string_; }
  // A named tuple's item called `name`, or nullptr.
  const Value* FindField(const std::string& name) const;
  // Why this value is undefined ("'x' is undefined", "'dict object' has no attribute 'y'").
  const std::string& UndefinedHint() const;

  // Python truthiness: "", 0, 0.0, None, Undefined and empty containers are false.
  bool Truthy() const;
  // Python ==, where 1 == 1.0 == True.
  bool Equals(const Value& other) const;
  // Python str(): what `{{ value }}` prints.
  std::string ToString() const;
  // Python repr(): how the value prints inside a container.
  std::string Repr() const;
  // jinja2's object type names in error messages: "dict object", "str object"...
  std::string TypeName() const;

  // d[key] on a dict, Undefined when missing. Throws std::invalid_argument for non-dicts.
  const Value* FindKey(const Value& key) const;

 private:
  Kind kind_;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<const std::string> string_;
  std::shared_ptr<const List> list_;
  std::shared_ptr<const Dict> dict_;
  std::shared_ptr<Namespace> namespace_;
  std::shared_ptr<const Object> object_;
  std::shared_ptr<const Function> function_;
  std::shared_ptr<const std::vector<std::string>> field_names_;  // named tuples only
};

// Python float repr: shortest round-trip digits, "1.0", "1e-05", "1e+16".
std::string PythonFloatRepr(double value);
// Python repr of a str: quotes chosen as Python chooses them.
std::string PythonStringRepr(const std::string& text);

// UTF-8 helpers: Python indexes strings by code point.
std::vector<char32_t> DecodeUtf8(std::string_view text);
std::string EncodeUtf8(const std::vector<char32_t>& code_points, size_t begin = 0, size_t end = SIZE_MAX);
void AppendUtf8(std::string& out, char32_t code_point);
// str.isspace() on one code point.
bool IsPythonSpace(char32_t code_point);

}  // namespace flotilla::chat_template
