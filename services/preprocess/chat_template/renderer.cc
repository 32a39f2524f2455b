// Statements and expressions. Filters, tests, methods and globals live in builtins.cc.
#include "services/preprocess/chat_template/renderer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace flotilla::chat_template {

const Value* Frame::Find(const std::string& name) const {
  for (const Frame* frame = this; frame != nullptr; frame = frame->parent.get()) {
    for (auto it = frame->variables.rbegin(); it != frame->variables.rend(); ++it) {
      if (it->first == name) return &it->second;
    }
  }
  return nullptr;
}

void Frame::Set(const std::string& name, Value value) {
  for (auto& [existing, slot] : variables) {
    if (existing == name) {
      slot = std::move(value);
      return;
    }
  }
  variables.emplace_back(name, std::move(value));
}

void Renderer::Fail(SourceLocation location, const std::string& message) {
  throw TemplateError(TemplateError::Kind::kRuntime, location, message);
}

void ThrowUndefined(const Value& value, SourceLocation location) {
  const std::string& hint = value.UndefinedHint();
  throw TemplateError(TemplateError::Kind::kRuntime, location, hint.empty() ? "value is undefined" : hint);
}

std::string PythonTypeName(const Value& value) {
  switch (value.kind()) {
    case Value::Kind::kUndefined: return "Undefined";
    case Value::Kind::kNone: return "NoneType";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kList: return "list";
    case Value::Kind::kTuple: return "tuple";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kNamespace: return "Namespace";
    case Value::Kind::kObject: return value.AsObject().type_name;
    case Value::Kind::kFunction: return "function";
  }
  return "object";
}

void Renderer::Step(SourceLocation location) {
  if (++steps_ > limits_.max_steps) {
    throw TemplateError(TemplateError::Kind::kLimit, location,
                        absl::StrCat("rendering took more than ", limits_.max_steps, " steps (a loop that does not end?)"));
  }
}

Renderer::NestingGuard::NestingGuard(Renderer& renderer, SourceLocation location) : renderer_(renderer) {
  if (++renderer_.nesting_depth_ > renderer_.limits_.max_nesting_depth) {
    --renderer_.nesting_depth_;
    throw TemplateError(TemplateError::Kind::kLimit, location,
                        absl::StrCat("the template nests deeper than ", renderer_.limits_.max_nesting_depth,
                                     " expressions and statements (endless recursion?)"));
  }
}

void Renderer::Append(std::string& out, std::string_view text, SourceLocation location) {
  bytes_written_ += text.size();
  if (bytes_written_ > limits_.max_output_bytes) {
    throw TemplateError(TemplateError::Kind::kLimit, location,
                        absl::StrCat("rendered output exceeds the limit of ", limits_.max_output_bytes, " bytes"));
  }
  out.append(text);
}

std::string Renderer::Render(const Template& parsed, std::vector<std::pair<std::string, Value>> context) {
  auto globals = std::make_shared<Frame>();
  globals->variables = MakeGlobals(*this);
  auto root = std::make_shared<Frame>();
  root->parent = globals;
  root->variables = std::move(context);
  std::string out;
  ExecuteBody(parsed.body, root, out);
  return out;
}

Renderer::Flow Renderer::ExecuteBody(const Body& body, const std::shared_ptr<Frame>& frame, std::string& out) {
  for (const auto& statement : body) {
    Flow flow = Execute(*statement, frame, out);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

namespace {

bool ExpressionUsesName(const Expression* expression, const std::string& name) {
  if (expression == nullptr) return false;
  if (expression->kind == Expression::Kind::kName && expression->name == name) return true;
  for (const auto& child : expression->children) {
    if (ExpressionUsesName(child.get(), name)) return true;
  }
  for (const auto& [keyword, child] : expression->keyword_arguments) {
    if (ExpressionUsesName(child.get(), name)) return true;
  }
  return false;
}

bool BodyUsesName(const Body& body, const std::string& name) {
  for (const auto& statement : body) {
    if (ExpressionUsesName(statement->expression.get(), name) || ExpressionUsesName(statement->condition.get(), name)) return true;
    for (const auto& [condition, branch] : statement->branches) {
      if (ExpressionUsesName(condition.get(), name) || BodyUsesName(branch, name)) return true;
    }
    for (const auto& [parameter, default_value] : statement->parameters) {
      if (ExpressionUsesName(default_value.get(), name)) return true;
    }
    // A nested macro has its own varargs/kwargs; a call block's body is a caller of the outer macro.
    if (statement->kind != Statement::Kind::kMacro && (BodyUsesName(statement->body, name) || BodyUsesName(statement->else_body, name))) {
      return true;
    }
  }
  return false;
}

}  // namespace

Renderer::Flow Renderer::Execute(const Statement& statement, const std::shared_ptr<Frame>& frame, std::string& out) {
  Step(statement.location);
  NestingGuard nesting(*this, statement.location);
  switch (statement.kind) {
    case Statement::Kind::kText:
      Append(out, statement.text, statement.location);
      return Flow::kNormal;
    case Statement::Kind::kOutput: {
      Value value = Evaluate(*statement.expression, frame);
      if (value.IsString()) {
        Append(out, value.AsString(), statement.location);
      } else {
        Append(out, value.ToString(), statement.location);
      }
      return Flow::kNormal;
    }
    case Statement::Kind::kIf:
      for (const auto& [condition, body] : statement.branches) {
        if (condition == nullptr || Evaluate(*condition, frame).Truthy()) return ExecuteBody(body, frame, out);
      }
      return Flow::kNormal;
    case Statement::Kind::kFor:
      ExecuteFor(statement, frame, out);
      return Flow::kNormal;
    case Statement::Kind::kSet:
      Assign(statement.target, Evaluate(*statement.expression, frame), *frame, statement.location);
      return Flow::kNormal;
    case Statement::Kind::kSetBlock: {
      std::string captured;
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      ExecuteBody(statement.body, inner, captured);
      Value value(std::move(captured));
      if (statement.expression) {
        auto subject = std::make_shared<Frame>();
        subject->parent = frame;
        subject->variables.emplace_back("\x01subject", value);
        value = Evaluate(*statement.expression, subject);
      }
      Assign(statement.target, value, *frame, statement.location);
      return Flow::kNormal;
    }
    case Statement::Kind::kFilterBlock: {
      std::string captured;
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      ExecuteBody(statement.body, inner, captured);
      auto subject = std::make_shared<Frame>();
      subject->parent = frame;
      subject->variables.emplace_back("\x01subject", Value(std::move(captured)));
      Append(out, Evaluate(*statement.expression, subject).ToString(), statement.location);
      return Flow::kNormal;
    }
    case Statement::Kind::kMacro:
      frame->Set(statement.name, MakeMacro(statement, frame));
      return Flow::kNormal;
    case Statement::Kind::kCallBlock: {
      const Expression& call = *statement.expression;
      Value callee = Evaluate(*call.children[0], frame);
      CallArguments arguments;
      EvaluateArguments(call, 1, frame, arguments);
      // The body becomes `caller`, a macro defined where the call block stands.
      auto caller_statement = std::make_shared<Statement>();
      const Statement* body_owner = &statement;
      std::weak_ptr<Frame> defining = frame;
      Value caller = Value::FromFunction("caller", [this, body_owner, defining](CallArguments& caller_arguments) -> Value {
        std::shared_ptr<Frame> parent = defining.lock();
        if (!parent) Fail(body_owner->location, "caller() used after its call block ended");
        auto inner = std::make_shared<Frame>();
        inner->parent = parent;
        for (size_t i = 0; i < body_owner->parameters.size(); ++i) {
          const auto& [parameter, default_value] = body_owner->parameters[i];
          Value bound = i < caller_arguments.positional.size() ? caller_arguments.positional[i]
                        : default_value ? Evaluate(*default_value, parent)
                                        : Value::Undefined("parameter '" + parameter + "' was not provided");
          for (const auto& [keyword, keyword_value] : caller_arguments.keyword) {
            if (keyword == parameter) bound = keyword_value;
          }
          inner->variables.emplace_back(parameter, bound);
        }
        std::string captured;
        ExecuteBody(body_owner->body, inner, captured);
        return Value(std::move(captured));
      });
      arguments.keyword.emplace_back("caller", caller);
      Value result = CallValue(callee, arguments, call.location);
      Append(out, result.ToString(), statement.location);
      return Flow::kNormal;
    }
    case Statement::Kind::kGeneration:
      // transformers' {% generation %} only records offsets for assistant masks; the text is the body's.
      return ExecuteBody(statement.body, frame, out);
    case Statement::Kind::kWith: {
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      for (const auto& [name, expression] : statement.parameters) inner->Set(name, Evaluate(*expression, frame));
      return ExecuteBody(statement.body, inner, out);
    }
    case Statement::Kind::kBreak:
      return Flow::kBreak;
    case Statement::Kind::kContinue:
      return Flow::kContinue;
  }
  return Flow::kNormal;
}

void Renderer::Assign(const AssignTarget& target, const Value& value, Frame& frame, SourceLocation location) {
  if (!target.attribute.empty()) {
    const Value* holder = frame.Find(target.names[0]);
    if (holder == nullptr || !holder->IsNamespace()) {
      Fail(location, "cannot assign attribute on non-namespace object '" + target.names[0] + "'");
    }
    if (target.attribute[0] == '_') {
      Fail(location, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + target.attribute +
                         "'. Please rename the attribute.");
    }
    Namespace& ns = holder->AsNamespace();
    for (auto& [name, slot] : ns.attributes) {
      if (name == target.attribute) {
        slot = value;
        return;
      }
    }
    ns.attributes.emplace_back(target.attribute, value);
    return;
  }
  if (!target.is_tuple) {
    frame.Set(target.names[0], value);
    return;
  }
  List items = Iterate(value, location);
  if (items.size() > target.names.size()) Fail(location, absl::StrCat("too many values to unpack (expected ", target.names.size(), ")"));
  if (items.size() < target.names.size()) {
    Fail(location, absl::StrCat("not enough values to unpack (expected ", target.names.size(), ", got ", items.size(), ")"));
  }
  for (size_t i = 0; i < items.size(); ++i) frame.Set(target.names[i], items[i]);
}

void Renderer::ExecuteFor(const Statement& statement, const std::shared_ptr<Frame>& frame, std::string& out) {
  Value iterable = Evaluate(*statement.expression, frame);
  RunLoop(statement, frame, iterable, /*depth=*/1, out);
}

// One pass of a for loop over `iterable`. In a `recursive` loop, `loop(children)` runs the same body
// over `children` one level deeper and returns what it rendered, as jinja2's LoopContext.__call__.
void Renderer::RunLoop(const Statement& statement, const std::shared_ptr<Frame>& frame, const Value& iterable, int64_t depth,
                       std::string& out) {
  List items = Iterate(iterable, statement.expression->location);
  if (statement.condition) {
    // The loop filter sees each item under the loop's target names, before `loop` exists.
    List kept;
    for (const Value& item : items) {
      auto test_frame = std::make_shared<Frame>();
      test_frame->parent = frame;
      Assign(statement.target, item, *test_frame, statement.location);
      if (Evaluate(*statement.condition, test_frame).Truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    if (!statement.else_body.empty()) {
      auto inner = std::make_shared<Frame>();
      inner->parent = frame;
      ExecuteBody(statement.else_body, inner, out);
    }
    return;
  }
  const int64_t length = static_cast<int64_t>(items.size());
  auto changed_state = std::make_shared<Value>(Value::Undefined());
  for (int64_t index = 0; index < length; ++index) {
    auto loop = std::make_shared<Object>();
    loop->type_name = "LoopContext";
    List cycle_items;
    loop->attributes = {
        {"index", Value(index + 1)},
        {"index0", Value(index)},
        {"revindex", Value(length - index)},
        {"revindex0", Value(length - index - 1)},
        {"first", Value(index == 0)},
        {"last", Value(index == length - 1)},
        {"length", Value(length)},
        {"depth", Value(depth)},
        {"depth0", Value(depth - 1)},
        {"previtem", index > 0 ? items[index - 1] : Value::Undefined("there is no previous item")},
        {"nextitem", index + 1 < length ? items[index + 1] : Value::Undefined("there is no next item")},
    };
    SourceLocation location = statement.location;
    loop->attributes.emplace_back("cycle", Value::FromFunction("cycle", [this, index, location](CallArguments& arguments) -> Value {
      if (arguments.positional.empty()) Fail(location, "no items for cycling given");
      return arguments.positional[index % arguments.positional.size()];
    }));
    loop->attributes.emplace_back("changed", Value::FromFunction("changed", [changed_state](CallArguments& arguments) -> Value {
      Value current = Value::FromTuple(arguments.positional);
      if (changed_state->IsUndefined() || !changed_state->Equals(current)) {
        *changed_state = current;
        return Value(true);
      }
      return Value(false);
    }));
    if (statement.recursive) {
      // Weak, as for macros: a loop object stored in a namespace must not keep its frame alive.
      std::weak_ptr<Frame> defining = frame;
      loop->attributes.emplace_back("__call__", Value::FromFunction("loop", [this, &statement, defining, depth,
                                                                          location](CallArguments& arguments) -> Value {
        std::shared_ptr<Frame> parent = defining.lock();
        if (!parent) Fail(location, "loop() called after its for loop ended");
        if (arguments.positional.size() != 1 || !arguments.keyword.empty()) {
          Fail(location, "loop() of a recursive loop takes exactly one iterable");
        }
        if (depth >= limits_.max_call_depth) {
          throw TemplateError(TemplateError::Kind::kLimit, location,
                              absl::StrCat("a recursive loop went deeper than ", limits_.max_call_depth, " levels"));
        }
        std::string rendered;
        RunLoop(statement, parent, arguments.positional[0], depth + 1, rendered);
        return Value(std::move(rendered));
      }));
    }
    auto inner = std::make_shared<Frame>();
    inner->parent = frame;
    inner->variables.emplace_back("loop", Value::FromObject(std::move(loop)));
    Assign(statement.target, items[index], *inner, statement.location);
    Flow flow = ExecuteBody(statement.body, inner, out);
    if (flow == Flow::kBreak) break;
  }
}

Value Renderer::MakeMacro(const Statement& statement, const std::shared_ptr<Frame>& frame) {
  const Statement* macro = &statement;
  std::weak_ptr<Frame> defining = frame;
  const bool takes_varargs = BodyUsesName(statement.body, "varargs");
  const bool takes_kwargs = BodyUsesName(statement.body, "kwargs");
  const bool takes_caller = BodyUsesName(statement.body, "caller");
  return Value::FromFunction(statement.name, [this, macro, defining, takes_varargs, takes_kwargs,
                                              takes_caller](CallArguments& arguments) -> Value {
    std::shared_ptr<Frame> parent = defining.lock();
    if (!parent) Fail(macro->location, "macro '" + macro->name + "' called after the scope that defined it ended");
    if (call_depth_ >= limits_.max_call_depth) {
      throw TemplateError(TemplateError::Kind::kLimit, macro->location,
                          absl::StrCat("macro '", macro->name, "' recursed deeper than ", limits_.max_call_depth, " calls"));
    }
    const auto& parameters = macro->parameters;
    if (arguments.positional.size() > parameters.size() && !takes_varargs) {
      Fail(macro->location, absl::StrCat("macro '", macro->name, "' takes not more than ", parameters.size(), " argument(s)"));
    }
    auto inner = std::make_shared<Frame>();
    inner->parent = parent;
    std::vector<bool> bound(parameters.size(), false);
    for (size_t i = 0; i < parameters.size() && i < arguments.positional.size(); ++i) {
      inner->variables.emplace_back(parameters[i].first, arguments.positional[i]);
      bound[i] = true;
    }
    Dict extra_keywords;
    Value caller;
    for (auto& [keyword, value] : arguments.keyword) {
      bool matched = false;
      for (size_t i = 0; i < parameters.size(); ++i) {
        if (parameters[i].first == keyword) {
          if (bound[i]) Fail(macro->location, "macro '" + macro->name + "' got multiple values for argument '" + keyword + "'");
          inner->variables.emplace_back(keyword, value);
          bound[i] = true;
          matched = true;
        }
      }
      if (matched) continue;
      if (keyword == "caller" && takes_caller) {
        caller = value;
      } else if (takes_kwargs) {
        extra_keywords.emplace_back(Value(keyword), value);
      } else {
        Fail(macro->location, "macro '" + macro->name + "' takes no keyword argument '" + keyword + "'");
      }
    }
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (bound[i]) continue;
      const auto& [parameter, default_value] = parameters[i];
      // Defaults are evaluated in the call's frame, so a default may refer to earlier parameters.
      inner->variables.emplace_back(parameter, default_value ? Evaluate(*default_value, inner)
                                                             : Value::Undefined("parameter '" + parameter + "' was not provided"));
    }
    List extra_positional;
    for (size_t i = parameters.size(); i < arguments.positional.size(); ++i) extra_positional.push_back(arguments.positional[i]);
    inner->variables.emplace_back("varargs", Value::FromTuple(std::move(extra_positional)));
    inner->variables.emplace_back("kwargs", Value::FromDict(std::move(extra_keywords)));
    const bool caller_is_parameter =
        std::any_of(parameters.begin(), parameters.end(), [](const auto& parameter) { return parameter.first == "caller"; });
    if (takes_caller && !caller_is_parameter) {
      inner->variables.emplace_back("caller", caller.IsUndefined() ? Value::Undefined("No caller defined") : caller);
    }
    std::string captured;
    ++call_depth_;
    try {
      ExecuteBody(macro->body, inner, captured);
    } catch (...) {
      --call_depth_;
      throw;
    }
    --call_depth_;
    return Value(std::move(captured));
  });
}

void Renderer::EvaluateArguments(const Expression& expression, size_t first, const std::shared_ptr<Frame>& frame,
                                 CallArguments& arguments) {
  for (size_t i = first; i < expression.children.size(); ++i) arguments.positional.push_back(Evaluate(*expression.children[i], frame));
  for (const auto& [keyword, argument] : expression.keyword_arguments) arguments.keyword.emplace_back(keyword, Evaluate(*argument, frame));
}

Value Renderer::CallValue(const Value& callee, CallArguments& arguments, SourceLocation location) {
  if (callee.IsUndefined()) ThrowUndefined(callee, location);
  const Function* function = callee.IsFunction() ? &callee.AsFunction() : nullptr;
  if (callee.IsObject()) {  // the `loop` of a recursive loop is callable
    for (const auto& [name, attribute] : callee.AsObject().attributes) {
      if (name == "__call__" && attribute.IsFunction()) function = &attribute.AsFunction();
    }
  }
  if (function == nullptr) Fail(location, "'" + PythonTypeName(callee) + "' object is not callable");
  try {
    return (*function)(arguments);
  } catch (TemplateError& error) {
    // Globals do not know where they were called from; the call site does.
    if (error.location.line == 0) error.location = location;
    throw;
  }
}

namespace {

// Python's slice indices for a sequence of `length` items.
std::vector<size_t> SliceIndices(int64_t length, const Value& start_value, const Value& stop_value, const Value& step_value,
                                 Renderer& renderer, SourceLocation location) {
  auto as_index = [&](const Value& value) -> std::optional<int64_t> {
    if (value.IsNone() || value.IsUndefined()) return std::nullopt;
    if (!value.IsInt() && !value.IsBool()) renderer.Fail(location, "slice indices must be integers or None");
    return value.AsInt();
  };
  int64_t step = as_index(step_value).value_or(1);
  if (step == 0) renderer.Fail(location, "slice step cannot be zero");
  std::optional<int64_t> start = as_index(start_value);
  std::optional<int64_t> stop = as_index(stop_value);
  auto clamp = [&](int64_t index, bool lower_bound_minus_one) {
    if (index < 0) index += length;
    if (step > 0) return std::clamp<int64_t>(index, 0, length);
    return std::clamp<int64_t>(index, lower_bound_minus_one ? -1 : -1, length - 1);
  };
  int64_t begin = start ? clamp(*start, false) : (step > 0 ? 0 : length - 1);
  int64_t end = stop ? clamp(*stop, true) : (step > 0 ? length : -1);
  std::vector<size_t> indices;
  if (step > 0) {
    for (int64_t i = begin; i < end; i += step) indices.push_back(static_cast<size_t>(i));
  } else {
    for (int64_t i = begin; i > end; i += step) indices.push_back(static_cast<size_t>(i));
  }
  return indices;
}

}  // namespace

Value Renderer::Evaluate(const Expression& expression, const std::shared_ptr<Frame>& frame) {
  Step(expression.location);
  NestingGuard nesting(*this, expression.location);
  switch (expression.kind) {
    case Expression::Kind::kLiteral:
      return expression.literal;
    case Expression::Kind::kName: {
      const Value* found = frame->Find(expression.name);
      if (found == nullptr) return Value::Undefined("'" + expression.name + "' is undefined");
      return *found;
    }
    case Expression::Kind::kList:
    case Expression::Kind::kTuple: {
      List items;
      items.reserve(expression.children.size());
      for (const auto& child : expression.children) items.push_back(Evaluate(*child, frame));
      return expression.kind == Expression::Kind::kList ? Value::FromList(std::move(items)) : Value::FromTuple(std::move(items));
    }
    case Expression::Kind::kDict: {
      Dict items;
      for (size_t i = 0; i + 1 < expression.children.size(); i += 2) {
        Value key = Evaluate(*expression.children[i], frame);
        Value item = Evaluate(*expression.children[i + 1], frame);
        if (key.IsSequence() && key.IsList()) Fail(expression.children[i]->location, "unhashable type: 'list'");
        if (key.IsDict()) Fail(expression.children[i]->location, "unhashable type: 'dict'");
        bool replaced = false;
        for (auto& [existing, slot] : items) {
          if (existing.Equals(key)) {
            slot = item;
            replaced = true;
          }
        }
        if (!replaced) items.emplace_back(std::move(key), std::move(item));
      }
      return Value::FromDict(std::move(items));
    }
    case Expression::Kind::kGetAttr:
      return GetAttribute(Evaluate(*expression.children[0], frame), expression.name, expression.location);
    case Expression::Kind::kGetItem:
      return GetItem(Evaluate(*expression.children[0], frame), Evaluate(*expression.children[1], frame), expression.location);
    case Expression::Kind::kSlice: {
      Value object = Evaluate(*expression.children[0], frame);
      if (object.IsUndefined()) ThrowUndefined(object, expression.location);
      Value bounds[3];
      for (int i = 0; i < 3; ++i) {
        bounds[i] = expression.children[i + 1] ? Evaluate(*expression.children[i + 1], frame) : Value::None();
      }
      if (object.IsString()) {
        std::vector<char32_t> code_points = DecodeUtf8(object.AsString());
        std::string out;
        for (size_t i : SliceIndices(code_points.size(), bounds[0], bounds[1], bounds[2], *this, expression.location)) {
          AppendUtf8(out, code_points[i]);
        }
        return Value(std::move(out));
      }
      if (object.IsSequence()) {
        const List& items = object.AsList();
        List out;
        for (size_t i : SliceIndices(items.size(), bounds[0], bounds[1], bounds[2], *this, expression.location)) out.push_back(items[i]);
        return object.IsList() ? Value::FromList(std::move(out)) : Value::FromTuple(std::move(out));
      }
      // jinja2 turns the TypeError of slicing a non-sequence into an undefined value.
      return Value::Undefined("'" + object.TypeName() + "' has no element slice");
    }
    case Expression::Kind::kCall: {
      Value callee = Evaluate(*expression.children[0], frame);
      CallArguments arguments;
      EvaluateArguments(expression, 1, frame, arguments);
      return CallValue(callee, arguments, expression.location);
    }
    case Expression::Kind::kFilter: {
      Value subject = expression.children[0] ? Evaluate(*expression.children[0], frame) : *frame->Find("\x01subject");
      CallArguments arguments;
      EvaluateArguments(expression, 1, frame, arguments);
      return CallFilter(expression.name, subject, arguments, expression.location);
    }
    case Expression::Kind::kTest: {
      Value subject = Evaluate(*expression.children[0], frame);
      CallArguments arguments;
      EvaluateArguments(expression, 1, frame, arguments);
      bool result = CallTest(expression.name, subject, arguments, expression.location);
      return Value(expression.negated ? !result : result);
    }
    case Expression::Kind::kUnary: {
      Value operand = Evaluate(*expression.children[0], frame);
      if (expression.name == "not") return Value(!operand.Truthy());
      if (operand.IsUndefined()) ThrowUndefined(operand, expression.location);
      if (!operand.IsNumber()) Fail(expression.location, "bad operand type for unary " + expression.name + ": '" + PythonTypeName(operand) + "'");
      if (expression.name == "+") return operand.IsBool() ? Value(operand.AsInt()) : operand;
      if (operand.IsFloat()) return Value(-operand.AsDouble());
      return Value(-operand.AsInt());
    }
    case Expression::Kind::kBinary:
      return EvaluateBinary(expression, frame);
    case Expression::Kind::kCompare: {
      Value left = Evaluate(*expression.children[0], frame);
      for (size_t i = 0; i < expression.operators.size(); ++i) {
        Value right = Evaluate(*expression.children[i + 1], frame);
        if (!Compare(expression.operators[i], left, right, expression.location)) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expression::Kind::kCondition: {
      if (Evaluate(*expression.children[0], frame).Truthy()) return Evaluate(*expression.children[1], frame);
      if (expression.children[2]) return Evaluate(*expression.children[2], frame);
      return Value::Undefined(absl::StrCat("the inline if-expression on line ", expression.location.line,
                                           " evaluated to false and no else section was defined."));
    }
  }
  return Value::Undefined();
}

namespace {

double FloorDivide(double left, double right) { return std::floor(left / right); }

int64_t FloorDivideInt(int64_t left, int64_t right) {
  int64_t quotient = left / right;
  if ((left % right != 0) && ((left < 0) != (right < 0))) --quotient;
  return quotient;
}

double PythonFloatModulo(double left, double right) {
  double result = std::fmod(left, right);
  if (result != 0 && ((result < 0) != (right < 0))) result += right;
  if (result == 0) result = std::copysign(0.0, right);
  return result;
}

std::string Repeat(const std::string& text, int64_t times) {
  std::string out;
  for (int64_t i = 0; i < times; ++i) out += text;
  return out;
}

}  // namespace

std::string FormatPercent(Renderer& renderer, const std::string& format, const Value& arguments, SourceLocation location);

Value Renderer::EvaluateBinary(const Expression& expression, const std::shared_ptr<Frame>& frame) {
  const std::string& op = expression.name;
  SourceLocation location = expression.location;
  if (op == "and") {
    Value left = Evaluate(*expression.children[0], frame);
    return left.Truthy() ? Evaluate(*expression.children[1], frame) : left;
  }
  if (op == "or") {
    Value left = Evaluate(*expression.children[0], frame);
    return left.Truthy() ? left : Evaluate(*expression.children[1], frame);
  }
  Value left = Evaluate(*expression.children[0], frame);
  Value right = Evaluate(*expression.children[1], frame);
  if (op == "~") {
    std::string out = left.ToString();
    std::string right_text = right.ToString();
    if (out.size() + right_text.size() > limits_.max_output_bytes) {
      throw TemplateError(TemplateError::Kind::kLimit, location,
                          absl::StrCat("string concatenation exceeds the limit of ", limits_.max_output_bytes, " bytes"));
    }
    return Value(out + right_text);
  }
  if (left.IsUndefined()) ThrowUndefined(left, location);
  if (right.IsUndefined()) ThrowUndefined(right, location);
  auto unsupported = [&]() {
    Fail(location, "unsupported operand type(s) for " + op + ": '" + PythonTypeName(left) + "' and '" + PythonTypeName(right) + "'");
  };
  if (left.IsNumber() && right.IsNumber()) {
    bool use_float = left.IsFloat() || right.IsFloat();
    if (op == "+") return use_float ? Value(left.AsDouble() + right.AsDouble()) : Value(left.AsInt() + right.AsInt());
    if (op == "-") return use_float ? Value(left.AsDouble() - right.AsDouble()) : Value(left.AsInt() - right.AsInt());
    if (op == "*") return use_float ? Value(left.AsDouble() * right.AsDouble()) : Value(left.AsInt() * right.AsInt());
    if (op == "/") {
      if (right.AsDouble() == 0) Fail(location, use_float ? "float division by zero" : "division by zero");
      return Value(left.AsDouble() / right.AsDouble());
    }
    if (op == "//") {
      if (right.AsDouble() == 0) Fail(location, use_float ? "float floor division by zero" : "integer division or modulo by zero");
      return use_float ? Value(FloorDivide(left.AsDouble(), right.AsDouble())) : Value(FloorDivideInt(left.AsInt(), right.AsInt()));
    }
    if (op == "%") {
      if (right.AsDouble() == 0) Fail(location, use_float ? "float modulo" : "integer division or modulo by zero");
      if (use_float) return Value(PythonFloatModulo(left.AsDouble(), right.AsDouble()));
      int64_t remainder = left.AsInt() % right.AsInt();
      if (remainder != 0 && ((remainder < 0) != (right.AsInt() < 0))) remainder += right.AsInt();
      return Value(remainder);
    }
    if (op == "**") {
      if (!use_float && right.AsInt() >= 0) {
        int64_t result = 1;
        for (int64_t i = 0; i < right.AsInt() && i < 64; ++i) result *= left.AsInt();
        return Value(result);
      }
      if (left.AsDouble() == 0 && right.AsDouble() < 0) Fail(location, "0.0 cannot be raised to a negative power");
      return Value(std::pow(left.AsDouble(), right.AsDouble()));
    }
  }
  if (op == "+") {
    if (left.IsString() && right.IsString()) return Value(left.AsString() + right.AsString());
    if (left.IsSequence() && right.IsSequence() && left.kind() == right.kind()) {
      List items = left.AsList();
      items.insert(items.end(), right.AsList().begin(), right.AsList().end());
      return left.IsList() ? Value::FromList(std::move(items)) : Value::FromTuple(std::move(items));
    }
    if (left.IsString()) Fail(location, "can only concatenate str (not \"" + PythonTypeName(right) + "\") to str");
    if (left.IsList()) Fail(location, "can only concatenate list (not \"" + PythonTypeName(right) + "\") to list");
    unsupported();
  }
  if (op == "*") {
    const Value* sequence = (left.IsString() || left.IsSequence()) ? &left : (right.IsString() || right.IsSequence()) ? &right : nullptr;
    const Value* count = sequence == &left ? &right : &left;
    if (sequence != nullptr && (count->IsInt() || count->IsBool())) {
      int64_t times = std::max<int64_t>(0, count->AsInt());
      if (sequence->IsString()) {
        if (sequence->AsString().size() * times > limits_.max_output_bytes) {
          throw TemplateError(TemplateError::Kind::kLimit, location, "string repetition exceeds the output limit");
        }
        return Value(Repeat(sequence->AsString(), times));
      }
      if (sequence->AsList().size() * times > static_cast<size_t>(limits_.max_range_items)) {
        throw TemplateError(TemplateError::Kind::kLimit, location, "list repetition exceeds the item limit");
      }
      List items;
      for (int64_t i = 0; i < times; ++i) items.insert(items.end(), sequence->AsList().begin(), sequence->AsList().end());
      return sequence->IsList() ? Value::FromList(std::move(items)) : Value::FromTuple(std::move(items));
    }
    if (sequence != nullptr) Fail(location, "can't multiply sequence by non-int of type '" + PythonTypeName(*count) + "'");
    unsupported();
  }
  if (op == "%" && left.IsString()) return Value(FormatPercent(*this, left.AsString(), right, location));
  unsupported();
  return Value::Undefined();  // not reached: unsupported() throws
}

bool LessThan(const Value& left, const Value& right, SourceLocation location) {
  if (left.IsUndefined()) ThrowUndefined(left, location);
  if (right.IsUndefined()) ThrowUndefined(right, location);
  if (left.IsNumber() && right.IsNumber()) {
    if (left.IsFloat() || right.IsFloat()) return left.AsDouble() < right.AsDouble();
    return left.AsInt() < right.AsInt();
  }
  if (left.IsString() && right.IsString()) return left.AsString() < right.AsString();
  if (left.IsSequence() && right.IsSequence() && left.kind() == right.kind()) {
    const List& a = left.AsList();
    const List& b = right.AsList();
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (!a[i].Equals(b[i])) return LessThan(a[i], b[i], location);
    }
    return a.size() < b.size();
  }
  throw TemplateError(TemplateError::Kind::kRuntime, location,
                      "'<' not supported between instances of '" + PythonTypeName(left) + "' and '" + PythonTypeName(right) + "'");
}

bool Renderer::Compare(const std::string& op, const Value& left, const Value& right, SourceLocation location) {
  if (op == "==") return left.Equals(right);
  if (op == "!=") return !left.Equals(right);
  if (op == "in" || op == "not in") {
    bool found = false;
    if (right.IsString()) {
      if (left.IsUndefined()) ThrowUndefined(left, location);
      if (!left.IsString()) Fail(location, "'in <string>' requires string as left operand, not " + PythonTypeName(left));
      found = right.AsString().find(left.AsString()) != std::string::npos;
    } else if (right.IsSequence()) {
      for (const Value& item : right.AsList()) {
        if (item.Equals(left)) {
          found = true;
          break;
        }
      }
    } else if (right.IsDict()) {
      found = right.FindKey(left) != nullptr;
    } else if (right.IsUndefined()) {
      found = false;
    } else {
      Fail(location, "argument of type '" + PythonTypeName(right) + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  // Python's reflected comparisons: a > b is b < a.
  auto name_of = [&](const std::string& symbol) {
    try {
      if (symbol == "<") return LessThan(left, right, location);
      if (symbol == ">") return LessThan(right, left, location);
      if (symbol == "<=") return !LessThan(right, left, location);
      return !LessThan(left, right, location);
    } catch (const TemplateError& error) {
      std::string message = error.what();
      if (message.rfind("'<' not supported", 0) == 0) {
        Fail(location, "'" + symbol + "' not supported between instances of '" + PythonTypeName(left) + "' and '" + PythonTypeName(right) + "'");
      }
      throw;
    }
  };
  return name_of(op);
}

Value Renderer::GetAttribute(const Value& object, const std::string& name, SourceLocation location) {
  if (object.IsUndefined()) ThrowUndefined(object, location);
  // jinja2's getattr: the Python attribute first (methods of str, dict, list), then the item.
  Value method = BoundMethod(*this, object, name, location);
  if (!method.IsUndefined()) return method;
  if (object.IsDict()) {
    if (const Value* found = object.FindKey(Value(name))) return *found;
  } else if (object.IsNamespace()) {
    for (const auto& [attribute, value] : object.AsNamespace().attributes) {
      if (attribute == name) return value;
    }
  } else if (object.IsObject()) {
    for (const auto& [attribute, value] : object.AsObject().attributes) {
      if (attribute == name) return value;
    }
  } else if (const Value* field = object.FindField(name)) {
    return *field;
  }
  return Value::Undefined("'" + object.TypeName() + "' has no attribute '" + name + "'");
}

Value Renderer::GetItem(const Value& object, const Value& key, SourceLocation location) {
  if (object.IsUndefined()) ThrowUndefined(object, location);
  // jinja2's getitem: the item first, then (for string keys) the attribute.
  if (object.IsDict()) {
    if (const Value* found = object.FindKey(key)) return *found;
  } else if ((object.IsSequence() || object.IsString()) && (key.IsInt() || key.IsBool())) {
    int64_t index = key.AsInt();
    if (object.IsString()) {
      std::vector<char32_t> code_points = DecodeUtf8(object.AsString());
      if (index < 0) index += static_cast<int64_t>(code_points.size());
      if (index >= 0 && index < static_cast<int64_t>(code_points.size())) {
        std::string out;
        AppendUtf8(out, code_points[index]);
        return Value(std::move(out));
      }
    } else {
      const List& items = object.AsList();
      if (index < 0) index += static_cast<int64_t>(items.size());
      if (index >= 0 && index < static_cast<int64_t>(items.size())) return items[index];
    }
    return Value::Undefined("'" + object.TypeName() + "' has no element " + key.Repr());
  } else if (object.IsNamespace() || object.IsObject()) {
    if (key.IsString()) {
      Value found = GetAttribute(object, key.AsString(), location);
      if (!found.IsUndefined()) return found;
    }
  }
  if (key.IsString()) {
    if (const Value* field = object.FindField(key.AsString())) return *field;
    Value method = BoundMethod(*this, object, key.AsString(), location);
    if (!method.IsUndefined()) return method;
    return Value::Undefined("'" + object.TypeName() + "' has no attribute '" + key.AsString() + "'");
  }
  return Value::Undefined("'" + object.TypeName() + "' has no element " + key.Repr());
}

List Iterate(const Value& value, SourceLocation location) {
  switch (value.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return value.AsList();
    case Value::Kind::kDict: {
      List keys;
      for (const auto& [key, item] : value.AsDict()) keys.push_back(key);
      return keys;
    }
    case Value::Kind::kString: {
      List characters;
      for (char32_t c : DecodeUtf8(value.AsString())) {
        std::string one;
        AppendUtf8(one, c);
        characters.emplace_back(std::move(one));
      }
      return characters;
    }
    default:
      throw TemplateError(TemplateError::Kind::kRuntime, location, "'" + PythonTypeName(value) + "' object is not iterable");
  }
}

}  // namespace flotilla::chat_template
